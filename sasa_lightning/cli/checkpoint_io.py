"""Checkpoint files that are either complete or absent, whatever kills the process."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..atomic import atomic_write


# Free space under which a failed checkpoint write is taken for a full disk.
FULL_DISK_BYTES = 64 * 2**20


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a local checkpoint to a temporary file beside it, syncs it, then renames it.

    Lightning's own save stages the file in the system's temporary folder and moves it, which is
    a copy, not a rename, when that folder is on another file system than the run (the usual case
    on a cluster: local /tmp, shared checkpoints), so a SIGKILL mid-copy leaves a truncated
    last.ckpt. Remote paths (s3://...) keep Lightning's behaviour.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if not isinstance(get_filesystem(path), type(get_filesystem("."))):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(partial: Path) -> None:
            with partial.open("wb") as file:
                try:
                    torch.save(checkpoint, file)
                except RuntimeError:
                    # torch's zip writer reports a write cut short by a full disk as a position
                    # mismatch ("unexpected pos"), not as the OSError it was.
                    if shutil.disk_usage(partial.parent).free < FULL_DISK_BYTES:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
                    raise
                file.flush()
                os.fsync(file.fileno())

        atomic_write(path, write)
