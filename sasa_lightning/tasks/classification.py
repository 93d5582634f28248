"""ImageClassifier: the paper's ImageNet training recipe as a LightningModule."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..models import create_model
from .ema import EMA
from .optim import parameter_groups, scaled_learning_rate, warmup_cosine
from .weights import load_for_finetuning


class ImageClassifier(L.LightningModule):
    """A registry model trained with cross-entropy, SGD + Nesterov and a warm-up + cosine schedule.

    model / model_options: the registry name and its overrides (create_model). The learning rate
    is given per 256 images and scaled by the global batch (per-device batch x devices x
    gradient accumulation): the paper's 1.6 at 4096 is lr_per_256=0.1. Weight decay skips norms,
    biases and position embeddings. With ema_decay set, an exponential moving average of the
    weights is kept, and it is what validation, test, predict and fine-tuning use.
    bn_momentum: PyTorch's batch-norm momentum, 1 - the paper's "decay" (0.9999 -> 0.0001).
    init_from: a checkpoint to start from (another head size is fine; another body is refused).
    """

    def __init__(
        self,
        model: str = "sasa_resnet50",
        num_classes: int = 1000,
        model_options: dict[str, Any] | None = None,
        lr_per_256: float = 0.1,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 1e-4,
        label_smoothing: float = 0.0,
        warmup_epochs: float = 10,
        ema_decay: float | None = None,
        bn_momentum: float | None = None,
        channels_last: bool = True,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model, num_classes=num_classes, **(model_options or {}))
        if init_from:
            rank_zero_info(f"init_from {init_from}: {load_for_finetuning(self.model, init_from)}")
        if bn_momentum is not None:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.momentum = bn_momentum
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = EMA(self.model, ema_decay) if ema_decay else None
        top_k = min(5, num_classes)
        self.metrics = torch.nn.ModuleDict(
            {
                f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for stage in ("val", "test")
                for name, k in (("acc1", 1), ("acc5", top_k))
            }
        )
        # Epoch means of the training loss and accuracy whose running sums are saved in checkpoints,
        # so a run resumed mid-epoch (preemption) still reports the whole epoch's means. They
        # average values already averaged over the processes, so every process holds the same
        # sums and the one checkpoint (rank 0's) restores them all.
        self.train_means = torch.nn.ModuleDict(
            {name: MeanMetric(sync_on_compute=False) for name in ("loss", "acc1")}
        )
        for mean in self.train_means.values():
            mean.persistent(True)
        self._last_batch_start: float | None = None

    @property
    def inference_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inference_model(images.to(memory_format=self.memory_format))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images.to(memory_format=self.memory_format))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        accuracy = (logits.argmax(1) == labels).float().mean()
        step_means = self.trainer.strategy.reduce(torch.stack([loss.detach(), accuracy]), reduce_op="mean")
        for name, value in zip(("loss", "acc1"), step_means):
            self.train_means[name](value)
            self.log(f"train/{name}", self.train_means[name], prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def on_train_epoch_start(self) -> None:
        # Not called when a run resumes mid-epoch: the restored sums carry on.
        for mean in self.train_means.values():
            mean.reset()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Images per second over the whole step, data loading included: from one batch start to the next.
        now = time.perf_counter()
        if self._last_batch_start is not None and batch_idx > 0:
            images = batch[0].shape[0] * self.trainer.world_size
            self.log("train/images_per_s", images / (now - self._last_batch_start), on_step=True, on_epoch=False)
        self._last_batch_start = now

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.model)

    def _evaluate(self, batch, stage: str) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, labels), sync_dist=True, prog_bar=stage == "val")
        for name in ("acc1", "acc5"):
            metric = self.metrics[f"{stage}_{name}"]
            metric(logits, labels)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "acc1")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        probabilities = self(images).softmax(1)
        top = probabilities.topk(min(5, probabilities.shape[1]), dim=1)
        return {"classes": top.indices, "probabilities": top.values}

    def global_batch_size(self) -> int:
        per_device = getattr(self.trainer.datamodule, "batch_size", None)
        if per_device is None:
            raise ValueError("the data module must have a batch_size attribute (images per device) to scale the learning rate")
        return per_device * self.trainer.world_size * self.trainer.accumulate_grad_batches

    def schedule_steps(self) -> tuple[int, int]:
        """(warm-up steps, total steps) of the LR schedule.

        The schedule spans trainer.max_epochs (the recipe's length) even when max_steps stops a
        run earlier, so an interrupted run and its resumption follow one schedule.
        """
        trainer = self.trainer
        estimated = int(trainer.estimated_stepping_batches)  # loads the train data: num_training_batches is known after
        steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
        epochs = trainer.max_epochs
        total = steps_per_epoch * epochs if epochs is not None and epochs >= 0 else estimated
        return round(self.hparams.warmup_epochs * steps_per_epoch), total

    def configure_optimizers(self):
        lr = scaled_learning_rate(self.hparams.lr_per_256, self.global_batch_size())
        optimizer = torch.optim.SGD(
            parameter_groups(self.model, self.hparams.weight_decay),
            lr=lr,
            momentum=self.hparams.momentum,
            nesterov=self.hparams.nesterov,
        )
        warmup_steps, total_steps = self.schedule_steps()
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
