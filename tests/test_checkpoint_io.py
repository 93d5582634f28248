"""Checkpoint writes are all-or-nothing."""

import pytest
import torch

from sasa_lightning.cli import checkpoint_io
from sasa_lightning.cli.checkpoint_io import AtomicCheckpointIO


def test_an_interrupted_write_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}

    def dies_half_way(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt  # what a kill during the write looks like from here

    monkeypatch.setattr(checkpoint_io.torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]

