"""ImageClassifier: the paper's ImageNet training recipe as a LightningModule."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics.classification import MulticlassAccuracy

from ..checkpoint import load_for_finetuning
from ..compat import is_batch_norm
from ..models import create_model
from .ema import EMA
from .reported_metrics import ReportedMetrics
from .train_means import TrainMeans
from .optim import ScaledLearningRate, optimizer_and_warmup_cosine


class ImageClassifier(ScaledLearningRate, L.LightningModule):
    """A registry model trained with cross-entropy, SGD + Nesterov and a warm-up + cosine schedule.

    model / model_options: the registry name and its overrides (create_model). The learning rate
    is given per 256 images and scaled by the global batch (per-device batch x devices x
    gradient accumulation): the paper's 1.6 at 4096 is lr_per_256=0.1. Weight decay skips norms,
    biases and position embeddings. With ema_decay set, an exponential moving average of the
    weights is kept, and it is what validation, test, predict and fine-tuning use.
    bn_momentum: PyTorch's batch-norm momentum, 1 - the paper's "decay" (0.9999 -> 0.0001).
    init_from: a checkpoint to start from (another head size is fine; another body is refused).
    Lightning's learning-rate finder works on `lr` (ScaledLearningRate): what it finds is kept
    as lr_per_256.
    compile: run the model under torch.compile (nn.Module.compile: its state dict, hence every
    checkpoint, is the same as without); the EMA copy runs eagerly.
    """

    lr_option, reference_batch = "lr_per_256", 256
    reported = ReportedMetrics(
        best="val/acc1",
        training=("train/loss_step", "train/acc1_step"),
        validation=("val/loss", "val/acc1", "val/acc5"),
        final=(("val/acc1", "validation accuracy"),),
        curves=(("loss", ("train/loss_step", "train/loss_epoch", "val/loss")),
                ("accuracy", ("train/acc1_epoch", "val/acc1", "val/acc5"))),
    )

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
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model, num_classes=num_classes, **(model_options or {}))
        if init_from:
            rank_zero_info(f"init_from {init_from}: {load_for_finetuning(self.model, init_from)}")
        if bn_momentum is not None:
            for module in self.model.modules():
                if is_batch_norm(module):
                    module.momentum = bn_momentum
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = EMA(self.model, ema_decay) if ema_decay else None
        if compile:  # after the EMA's deep copy, which would share the compiled call of the original
            self.model.compile()
            rank_zero_info("compile: the model runs under torch.compile")
        top_k = min(5, num_classes)
        self.metrics = torch.nn.ModuleDict(
            {
                f"{stage}_{name}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for stage in ("val", "test")
                for name, k in (("acc1", 1), ("acc5", top_k))
            }
        )
        self.train_means = TrainMeans(("loss", "acc1"))

    @property
    def inference_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        model = self.inference_model
        # The EMA stays in float32 when the model is cast to bf16; under autocast this is a no-op.
        dtype = next(model.parameters()).dtype
        return model(images.to(dtype=dtype, memory_format=self.memory_format))

    def _ema_in_float32(self) -> None:
        # After the strategy's setup, which may have cast every parameter (bf16-true, DeepSpeed bf16).
        if self.ema is not None:
            self.ema.keep_float32()

    def on_fit_start(self) -> None:
        self._ema_in_float32()

    def on_validation_start(self) -> None:
        self._ema_in_float32()

    def on_test_start(self) -> None:
        self._ema_in_float32()

    def on_predict_start(self) -> None:
        self._ema_in_float32()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images.to(memory_format=self.memory_format))
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        accuracy = (logits.argmax(1) == labels).float().mean()
        self.train_means.log(self, {"loss": loss, "acc1": accuracy}, prog_bar=("loss", "acc1"))
        return loss

    def on_train_epoch_start(self) -> None:
        # Not called when a run resumes mid-epoch: the restored sums carry on.
        self.train_means.reset()

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

    def configure_optimizers(self):
        hp = self.hparams
        return optimizer_and_warmup_cosine(self.model, self.trainer, self.lr, hp.momentum, hp.nesterov, hp.weight_decay, hp.warmup_epochs)
