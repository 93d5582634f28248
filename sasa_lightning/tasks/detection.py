"""ObjectDetector: the paper's COCO recipe (appendix A.3) for the registry's RetinaNets."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchvision.models.detection import RetinaNet

from ..checkpoint import load_backbone
from ..errors import ConfigError
from ..models import create_model
from .optim import OPTIMIZERS, ScaledLearningRate, optimizer_and_warmup_cosine
from .reported_metrics import ReportedMetrics
from .train_means import TrainMeans

# What validation and test log, as torchmetrics' MeanAveragePrecision names them; -1 where the
# data has no object of that size (COCO's convention).
COCO_METRICS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")
LOSSES = ("loss", "classification", "box_regression")


def _mean_average_precision():
    from torchmetrics.detection import MeanAveragePrecision

    # Never synced by torchmetrics: it gathers its per-image lists one image at a time, which
    # needs the same number of images on every process (ObjectDetector gathers them itself).
    return MeanAveragePrecision(iou_type="bbox", backend="faster_coco_eval", sync_on_compute=False)


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().as_subclass(torch.Tensor).cpu()


def _to_channels_last(module: torch.nn.Module, args: tuple) -> tuple:
    # The batch RetinaNet's transform pads and stacks, before the backbone sees it.
    return (args[0].contiguous(memory_format=torch.channels_last),)


class ObjectDetector(ScaledLearningRate, L.LightningModule):
    """A registry detector trained with RetinaNet's focal and box losses, SGD with momentum and a
    warm-up + cosine schedule; validated with COCO mAP.

    model / model_options: the registry name and its overrides (create_model). The learning rate
    is given per 64 images (the paper's 0.12 at batch 64) and scaled by the global batch; one
    warm-up epoch from 0, then cosine decay over trainer.max_epochs; Lightning's learning-rate
    finder works on `lr`, and what it finds is kept as lr_per_64 (ScaledLearningRate). Weight decay skips norms,
    biases and position embeddings. optimizer "adamw" (momentum as its beta1) instead of the
    paper's "sgd" is for small models trained from scratch, such as the shapes demo's.
    backbone_init: a classifier checkpoint (an ImageClassifier's, or `sasa export`'s) whose
    weights start the backbone when training starts; what it lacks or holds beyond the backbone
    is reported. A resumed run restores its own weights over it, and validate/test/predict do
    not read it.
    category_ids / category_names: the data set's category of each label, taken from the data
    module when training starts and kept in the checkpoint, so that predictions name COCO
    categories.
    channels_last: the backbone (body and FPN) keeps its weights and takes its batch in
    channels-last memory format, as the classifier does. compile: the backbone runs under
    torch.compile; the heads, losses and box decoding, whose shapes depend on the detections,
    stay eager.
    """

    lr_option, reference_batch = "lr_per_64", 64
    reported = ReportedMetrics(
        best="val/map",
        training=("train/loss_step",),
        validation=("val/map", "val/map_50"),
        final=(("val/map", "validation mAP"), ("val/map_50", "mAP@0.5")),
        curves=(("loss", ("train/loss_step", "train/loss_epoch")), ("mAP", ("val/map", "val/map_50"))),
    )
    # Set from the data module when training starts, so a checkpoint may differ from the config.
    hparams_from_data = ("category_ids", "category_names")

    def __init__(
        self,
        model: str = "retinanet_sasa_resnet50",
        num_classes: int = 80,
        model_options: dict[str, Any] | None = None,
        lr_per_64: float = 0.12,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 1e-4,
        warmup_epochs: float = 1,
        optimizer: str = "sgd",
        backbone_init: str | None = None,
        category_ids: list[int] | None = None,
        category_names: list[str] | None = None,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model, num_classes=num_classes, **(model_options or {}))
        if not isinstance(self.model, RetinaNet):
            raise ConfigError(f"ObjectDetector needs a detector; {model!r} is not one (use retinanet_resnet50 or "
                             f"retinanet_sasa_resnet50)")
        for name, values in (("category_ids", category_ids), ("category_names", category_names)):
            if values is not None and len(values) != num_classes:
                raise ConfigError(f"{name} must give one entry per class ({num_classes}), got {len(values)}")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if channels_last:
            self.model.backbone.to(memory_format=torch.channels_last)
            self.model.backbone.register_forward_pre_hook(_to_channels_last)
        if compile:
            self.model.backbone.compile()
            rank_zero_info("compile: the backbone runs under torch.compile")
        self.train_means = TrainMeans(LOSSES)
        # This process's (detections, ground truth) per evaluated image, until the epoch ends.
        self._evaluated: dict[str, list] = {"val": [], "test": []}

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        data = self.trainer.datamodule
        if getattr(data, "category_ids", None) is not None:
            self.hparams.category_ids = list(data.category_ids)
            self.hparams.category_names = list(data.category_names)
        if self.hparams.backbone_init:
            report = load_backbone(self.model.backbone.body, self.hparams.backbone_init)
            rank_zero_info(f"backbone_init {self.hparams.backbone_init}: {report}")
            if report.missing:
                rank_zero_warn(f"backbone_init: {len(report.missing)} backbone tensors are not in the checkpoint and "
                               f"keep their initialisation: {', '.join(report.missing[:5])}")

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Detections per image (boxes x1, y1, x2, y2 in the image's pixels, scores, labels)."""
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = losses["classification"] + losses["bbox_regression"]
        values = {"loss": loss, "classification": losses["classification"], "box_regression": losses["bbox_regression"]}
        self.train_means.log(self, values, prog_bar=("loss",))
        return loss

    def on_train_epoch_start(self) -> None:
        # Not called when a run resumes mid-epoch: the restored sums carry on.
        self.train_means.reset()

    def _evaluate(self, batch, stage: str) -> None:
        images, targets = batch
        for found, truth in zip(self(images), targets):
            self._evaluated[stage].append((
                truth["image_id"],
                {"boxes": _plain(found["boxes"]).float(), "scores": _plain(found["scores"]).float(),
                 "labels": _plain(found["labels"])},
                {"boxes": _plain(truth["boxes"]), "labels": _plain(truth["labels"]), "iscrowd": _plain(truth["iscrowd"])},
            ))

    def _log_map(self, stage: str) -> None:
        """COCO mAP over every process's images. The sampler gives each image to one process, and
        the processes may hold different numbers of images; every process gathers them all and
        computes the same values. Images go in id order, so that ties between scores fall the
        same way whatever the number of processes."""
        local, self._evaluated[stage] = self._evaluated[stage], []
        shares = [local]
        if self.trainer.world_size > 1:
            shares = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(shares, local)
        metric = _mean_average_precision()
        for _, found, truth in sorted((item for share in shares for item in share), key=lambda item: item[0]):
            metric.update([found], [truth])
        results = metric.compute()
        self.log_dict({f"{stage}/{name}": results[name] for name in COCO_METRICS}, sync_dist=True)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_map("val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_map("test")

    def predict_step(self, batch, batch_idx: int) -> list[dict[str, Any]]:
        """One record per image: its id and file, and its detections with COCO category ids."""
        images, infos = batch
        ids = self.hparams.category_ids or list(range(self.hparams.num_classes))
        names = self.hparams.category_names or [str(i) for i in ids]
        records = []
        for info, found in zip(infos, self(images)):
            labels = found["labels"].tolist()
            records.append({
                **info,
                "boxes": found["boxes"].float().cpu(),
                "scores": found["scores"].float().cpu(),
                "category_ids": [ids[label] for label in labels],
                "category_names": [names[label] for label in labels],
            })
        return records

    def configure_optimizers(self):
        hp = self.hparams
        return optimizer_and_warmup_cosine(self.model, self.trainer, self.lr, hp.momentum, hp.nesterov, hp.weight_decay,
                                 hp.warmup_epochs, hp.optimizer)
