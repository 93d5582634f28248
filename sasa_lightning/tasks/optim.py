"""The paper's optimisation recipes: SGD with momentum, a learning rate scaled by the global batch,
linear warm-up then cosine decay, and no weight decay on norms and biases."""

from __future__ import annotations

import math

import torch
from torch import nn
from ..errors import ConfigError

NORM_TYPES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight decay for weights, none for norms, biases and position embeddings.

    Modules name the parameters that take no decay in a `no_weight_decay` tuple (the relative
    and absolute position embeddings of the attention layers and the stem).
    """
    decay, no_decay = [], []
    for module in model.modules():
        exempt = getattr(module, "no_weight_decay", ())
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, NORM_TYPES) or name == "bias" or name in exempt:
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_learning_rate(lr: float, global_batch_size: int, reference_batch_size: int = 256) -> float:
    """The linear scaling rule: `lr` at reference_batch_size (the paper's ImageNet 1.6 at batch 4096 is
    0.1 per 256 images; its COCO 0.12 is per 64)."""
    return lr * global_batch_size / reference_batch_size


class ScaledLearningRate:
    """A task's `lr`: the optimiser's rate, its `lr_option` (the rate per `reference_batch`
    images) scaled by the global batch. Lightning's learning-rate finder (the LearningRateFinder
    callback, Tuner.lr_find) reads and sets `lr`; what it finds is stored per reference_batch
    images, so the checkpoint records it as the config gives it, and the schedules' base rates
    follow it: the finder sets the optimiser's rate, which the warm-up/cosine schedule would put
    back to the old one at its next step."""

    lr_option: str
    reference_batch: int

    @property
    def lr(self) -> float:
        return scaled_learning_rate(self.hparams[self.lr_option], global_batch_size(self.trainer), self.reference_batch)

    @lr.setter
    def lr(self, value: float) -> None:
        self.hparams[self.lr_option] = value * self.reference_batch / global_batch_size(self.trainer)
        for config in self.trainer.lr_scheduler_configs:
            config.scheduler.base_lrs = [value] * len(config.scheduler.base_lrs)


def global_batch_size(trainer) -> int:
    """Images per optimiser step: per-device batch x devices x gradient accumulation.

    The per-device batch is the data module's batch_size, or, for `trainer.fit(task, loader)`
    without one, the train DataLoader's (its batch sampler's, where it was given one)."""
    per_device = getattr(trainer.datamodule, "batch_size", None)
    if per_device is None and trainer.datamodule is None:
        trainer.estimated_stepping_batches  # loads the train data: train_dataloader is set after
        loader = trainer.train_dataloader
        per_device = getattr(loader, "batch_size", None) or getattr(getattr(loader, "batch_sampler", None), "batch_size", None)
    if per_device is None:
        raise ConfigError("the learning rate is scaled by the batch size, and neither the data module nor the train "
                          "DataLoader has one: give the data module a batch_size attribute (images per device), or "
                          "train from a DataLoader made with batch_size")
    return per_device * trainer.world_size * trainer.accumulate_grad_batches


def schedule_steps(trainer, warmup_epochs: float) -> tuple[int, int]:
    """(warm-up steps, total steps) of the LR schedule.

    The schedule spans trainer.max_epochs (the recipe's length) even when max_steps stops a
    run earlier, so an interrupted run and its resumption follow one schedule.
    """
    estimated = int(trainer.estimated_stepping_batches)  # loads the train data: num_training_batches is known after
    steps_per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    epochs = trainer.max_epochs
    total = steps_per_epoch * epochs if epochs is not None and epochs >= 0 else estimated
    return round(warmup_epochs * steps_per_epoch), total


OPTIMIZERS = ("sgd", "adamw")


def optimizer_and_warmup_cosine(model: nn.Module, trainer, lr: float, momentum: float, nesterov: bool, weight_decay: float,
                      warmup_epochs: float, optimizer: str = "sgd") -> dict:
    """configure_optimizers' answer: the optimizer over parameter_groups, stepped per batch by
    warmup_cosine. "sgd" is the paper's; "adamw" (momentum is its beta1) learns faster from
    scratch, which the small demos use."""
    groups = parameter_groups(model, weight_decay)
    if optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    elif optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999))
    else:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    warmup_steps, total_steps = schedule_steps(trainer, warmup_epochs)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear from ~0 to 1 over warmup_steps, then cosine to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
