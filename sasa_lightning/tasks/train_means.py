"""Epoch means of training step values that survive a mid-epoch resume."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric


class TrainMeans(nn.ModuleDict):
    """One checkpointed MeanMetric per name, fed with step values already averaged over the processes.

    Every process then holds the same sums, so the one checkpoint (rank 0's) restores them all,
    and a run resumed mid-epoch (preemption) still reports the whole epoch's means.
    """

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__({name: MeanMetric(sync_on_compute=False) for name in names})
        for mean in self.values():
            mean.persistent(True)

    def log(self, module: L.LightningModule, values: dict[str, torch.Tensor], prog_bar: tuple[str, ...] = ()) -> None:
        """Logs train/<name> per step and as the epoch mean, for every name of `values`."""
        step = module.trainer.strategy.reduce(torch.stack([v.detach().float() for v in values.values()]), reduce_op="mean")
        for name, value in zip(values, step):
            self[name](value)
            module.log(f"train/{name}", self[name], prog_bar=name in prog_bar, on_step=True, on_epoch=True)

    def reset(self) -> None:
        for mean in self.values():
            mean.reset()
