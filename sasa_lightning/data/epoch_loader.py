"""EpochLoader: a loader whose epoch and first batch are the ones Lightning says they are."""

from __future__ import annotations

from typing import Callable, Iterable

from .. import compat


class EpochLoader:
    """Batches of epoch `e` from batch `b` on, where Lightning decides e and b.

    `batches(epoch, start)` returns the iterable of that epoch's batches, skipping the first
    `start`. The epoch comes from `set_epoch` (Lightning calls `loader.sampler.set_epoch(n)`
    before every epoch, so this loader is its own `sampler`); `start()` is asked when the epoch's
    first batch is fetched and is 0 except when a run resumes from a checkpoint saved mid-epoch
    (preemption), so that the rest of the epoch is exactly what an uninterrupted run would see.

    Iteration begins lazily, at the first batch: Lightning creates a restored run's iterator
    before it sets the epoch, and a DataLoader with workers would draw its sampler's order at
    once. `len()` is always the whole epoch, as Lightning counts resumed batches itself.
    """

    def __init__(
        self, batches: Callable[[int, int], Iterable], length: int, batch_size: int, start: Callable[[], int] | None = None
    ) -> None:
        self.batches, self.length, self.start = batches, length, start
        self.epoch = 0
        # The DataLoader attributes Lightning reads: loader.sampler.set_epoch and
        # loader.batch_sampler.{batch_size, sampler} (DeepSpeed takes its micro-batch size there).
        self.sampler = self.batch_sampler = self
        self.batch_size = batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        start = self.start() if self.start is not None else 0
        iterator = iter(self.batches(self.epoch, start))
        try:
            yield from iterator
        finally:
            close = getattr(iterator, "close", None)  # stops FFCV's reader thread when an epoch is cut short
            if close is not None:
                close()

    def __len__(self) -> int:
        return self.length

    # Lightning's resumable-loader interface. Where to resume is Lightning's own loop progress,
    # read by `start` above, so there is nothing to save; having the interface tells Lightning
    # that a mid-epoch resume is exact (it would otherwise warn that it is unreliable).
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def replicas(trainer) -> tuple[int, int]:
    """(world size, global rank) of this process; (1, 0) outside a trainer."""
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)


def batches_done(trainer) -> int:
    """Batches of the current training epoch already trained on.

    0 at the start of every epoch, except the first epoch of a run restored from a checkpoint
    saved mid-epoch (SLURM preemption), whose loop progress Lightning restores before it fetches
    the first batch. The training loaders ask when they start an epoch.
    """
    return compat.batches_done(trainer) if trainer is not None else 0
