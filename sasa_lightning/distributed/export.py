"""`sasa export`: a DeepSpeed checkpoint directory to one fp32 Lightning checkpoint file.

The result holds the consolidated weights (EMA included) and the run's hyper-parameters, loads
with torch.load(weights_only=True), and is accepted by `sasa validate|test|predict` and by
fine-tuning (`init_from`) on machines without DeepSpeed. The directory is checked file by file
with weights_only=True first (safe_load.py), because the converter unpickles whatever it finds.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from ..atomic import atomic_write
from .safe_load import check_deepspeed_checkpoint

# What evaluating or fine-tuning needs; the optimizer and loop states stay with DeepSpeed's directory.
KEPT = ("epoch", "global_step", "pytorch-lightning_version", "hyper_parameters", "hparams_name")


def export_deepspeed_checkpoint(checkpoint_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    checkpoint_dir, out = Path(checkpoint_dir), Path(out)
    model_states = check_deepspeed_checkpoint(checkpoint_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        consolidated = convert_zero_checkpoint_to_fp32_state_dict(checkpoint_dir, Path(scratch) / "full.ckpt")
        checkpoint = {key: consolidated[key] for key in KEPT if key in consolidated}
        checkpoint["hyper_parameters"] = dict(checkpoint.get("hyper_parameters", {}))
        # The converter rebuilds the trained parameters from the optimizer's fp32 partitions; under
        # ZeRO-1 it drops frozen ones (the EMA), which rank 0's module state holds whole.
        weights = {**(model_states.get("module") or {}), **consolidated["state_dict"]}
        checkpoint["state_dict"] = {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}
        return atomic_write(out, lambda partial: torch.save(checkpoint, partial))
