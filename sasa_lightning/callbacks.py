"""Callbacks the `sasa` command adds to every run."""

from __future__ import annotations

import sys
import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


def _format(metrics: dict, keys) -> str:
    return "  ".join(f"{k} {float(metrics[k]):.4g}" for k in keys if k in metrics)


class LineProgress(L.Callback):
    """Single-line progress for logs that are not a terminal (SLURM output files).

    A progress bar redraws with carriage returns, which fill a log file with noise; in a
    terminal the usual bar is shown and this callback stays silent.
    """

    def __init__(self, every_seconds: float = 30.0, stream=None) -> None:
        self.every_seconds = every_seconds
        self.stream = stream or sys.stderr
        self.enabled = not self.stream.isatty()
        self._last = 0.0

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.every_seconds:
            return
        self._last = now
        metrics = trainer.callback_metrics
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} batch {batch_idx + 1}/{trainer.num_training_batches} "
            f"step {trainer.global_step}  {_format(metrics, ('train/loss_step', 'train/acc1_step', 'train/images_per_s'))}",
            file=self.stream,
            flush=True,
        )

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.enabled or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} done  "
            f"{_format(metrics, ('train/loss_epoch', 'val/loss', 'val/acc1', 'val/acc5'))}",
            file=self.stream,
            flush=True,
        )


class PredictionWriter(L.pytorch.callbacks.BasePredictionWriter):
    """`sasa predict` writes <default_root_dir>/predictions.pt: each output key, concatenated over batches.

    For the classifier: 'classes' and 'probabilities', the top-5 per image, in data order.
    Written under a temporary name and renamed, so it is either complete or absent.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        import os

        import torch

        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not batches or not isinstance(batches[0], dict):
            return
        merged = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
        suffix = "" if trainer.world_size == 1 else f"_rank{trainer.global_rank}"
        out = os.path.join(trainer.default_root_dir, f"predictions{suffix}.pt")
        os.makedirs(trainer.default_root_dir, exist_ok=True)
        torch.save(merged, out + ".partial")
        os.replace(out + ".partial", out)
        print(f"wrote {out} ({', '.join(f'{k} {tuple(v.shape)}' for k, v in merged.items())})", flush=True)
