"""Progress lines for logs that are not a terminal."""

from __future__ import annotations

import sys
import time

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from .throughput import THROUGHPUT_METRIC


def _format(metrics: dict, keys) -> str:
    return "  ".join(f"{k} {float(metrics[k]):.4g}" for k in keys if k in metrics)


def _reported(pl_module, which: str) -> tuple[str, ...]:
    """The task's own metric names for this line (ReportedMetrics); none for a module that declares none."""
    reported = getattr(pl_module, "reported", None)
    return getattr(reported, which) if reported is not None else ()


class LineProgress(L.Callback):
    """Single-line progress for logs that are not a terminal (SLURM output files).

    A progress bar redraws with carriage returns, which fill a log file with noise; in a
    terminal the usual bar is shown and this callback stays silent. The values shown are those
    the task reports (its `reported.training` and `reported.validation`).
    """

    def __init__(self, every_seconds: float = 30.0) -> None:
        self.every_seconds = every_seconds
        self.stream = sys.stderr
        self.enabled = not self.stream.isatty()
        self._last = 0.0

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.every_seconds:
            return
        self._last = now
        shown = (*_reported(pl_module, "training"), THROUGHPUT_METRIC)
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} batch {batch_idx + 1}/{trainer.num_training_batches} "
            f"step {trainer.global_step}  {_format(trainer.callback_metrics, shown)}",
            file=self.stream,
            flush=True,
        )

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        # After the tasks' own epoch-end hooks: the detector computes its mAP there.
        if not self.enabled or trainer.sanity_checking:
            return
        # Only a fit has epochs to count; `sasa validate` validates once.
        fitting = trainer.state.fn == "fit"
        epoch = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} " if fitting else ""
        print(
            f"{epoch}validated  {_format(trainer.callback_metrics, _reported(pl_module, 'validation'))}",
            file=self.stream,
            flush=True,
        )
