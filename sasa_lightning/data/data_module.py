"""What every DataModule of the project shares."""

from __future__ import annotations

import os

import lightning as L

from ..errors import ConfigError
from .epoch_loader import batches_done, replicas
from .errors import DataError


def usable_cores() -> int:
    """The cores this process may run on: a SLURM job's or a container's share, not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class DataModule(L.LightningDataModule):
    """batch_size is per device (checked here); num_workers defaults to min(default_worker_cap,
    usable cores); test and predict read the validation data unless a module says otherwise.
    replicas() and batches_done() are this process's share of the run (its rank, and the batches
    of the epoch a resumed run has already trained on).
    """

    # DataLoader workers are processes, each with its own copy of the pipeline: a few keep a GPU
    # fed. FFCVImageNet's are threads of one process and take every core (None).
    default_worker_cap: int | None = 4

    def __init__(self, batch_size: int, num_workers: int | None = None, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed

    def workers(self) -> int:
        if self.num_workers is not None:
            return self.num_workers
        cores = usable_cores()
        return cores if self.default_worker_cap is None else min(self.default_worker_cap, cores)

    def replicas(self) -> tuple[int, int]:
        return replicas(self.trainer)

    def batches_done(self) -> int:
        return batches_done(self.trainer)

    def check_one_batch(self, images: int, where: str, what: str = "training images") -> None:
        """Training drops incomplete batches, so fewer images than one batch would train nothing."""
        if images < self.batch_size:
            raise DataError(
                f"{where} has {images} {what}, fewer than one batch of {self.batch_size}; "
                f"lower --data.init_args.batch_size or add images"
            )

    def test_dataloader(self):
        return self.val_dataloader()

    def predict_dataloader(self):
        return self.val_dataloader()
