"""Training throughput, data loading included."""

from __future__ import annotations

import time

import lightning as L

THROUGHPUT_METRIC = "train/images_per_s"


class Throughput(L.Callback):
    """Logs train/images_per_s over whole steps, data loading included: from one batch start to the next."""

    def __init__(self) -> None:
        self._last_batch_start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_start is not None and batch_idx > 0:
            images = len(batch[0]) * trainer.world_size  # a tensor's first dimension, or a detector's list of images
            pl_module.log(THROUGHPUT_METRIC, images / (now - self._last_batch_start), on_step=True, on_epoch=False)
        self._last_batch_start = now
