"""DeepSpeed checkpoint directories, read without running code from them.

DeepSpeed's engine and both ZeRO-to-fp32 converters (DeepSpeed's and Lightning's) load every file
of a checkpoint with `torch.load(weights_only=False)`, so a crafted file runs code the moment a
run resumes from it or `sasa export` reads it. Before handing a directory to them, every file of
it is loaded here with `weights_only=True`, allowing only the few classes DeepSpeed itself stores
(its loss scalers, the ZeRO stage enum and its fragment addresses, rebuilt from plain
values); a file that needs anything
else is refused in one line. What passes holds nothing but tensors, plain values and those classes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError


# Rank 0's model states: without ZeRO-3, and with it.
RANK0_MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")


def deepspeed_safe_globals() -> list:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def is_deepspeed_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "latest").is_file() and any(path.glob("*/*mp_rank_*_model_states.pt"))


def _tag_folder(checkpoint_dir: Path) -> Path:
    """The folder `latest` names, refused unless it is a folder inside the checkpoint."""
    tag = (checkpoint_dir / "latest").read_text().strip()
    folder = (checkpoint_dir / tag).resolve()
    if not tag or folder.parent != checkpoint_dir.resolve() or not folder.is_dir():
        raise CheckpointError(f"DeepSpeed checkpoint {str(checkpoint_dir)!r}: its 'latest' file names {tag!r}, "
                              f"which is not a folder of the checkpoint")
    return folder


def check_deepspeed_checkpoint(checkpoint_dir: str | Path) -> dict:
    """Load every file of the checkpoint's latest tag safely; return its model states (rank 0's).

    Raises CheckpointError, naming the file, for anything that is not a complete checkpoint file
    of tensors and plain values.
    """
    checkpoint_dir = Path(checkpoint_dir)
    if not is_deepspeed_checkpoint(checkpoint_dir):
        raise CheckpointError(
            f"{str(checkpoint_dir)!r} is not a DeepSpeed checkpoint directory (expected a 'latest' file and "
            f"<tag>/*mp_rank_*_model_states.pt, as DeepSpeed runs write for e.g. checkpoints/last.ckpt)"
        )
    folder = _tag_folder(checkpoint_dir)
    files = sorted(folder.glob("*.pt"))
    model_states = None
    with torch.serialization.safe_globals(deepspeed_safe_globals()):
        for file in files:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True)
            except Exception as error:  # torch.load raises many kinds on a foreign or damaged file
                reason = next((line.strip() for line in str(error).splitlines() if "GLOBAL" in line), None)
                reason = reason or (str(error).splitlines()[0] if str(error) else type(error).__name__)
                raise CheckpointError(
                    f"DeepSpeed checkpoint file {str(file)!r} is corrupt, truncated, or holds objects other than "
                    f"tensors and plain values (loaded with weights_only=True, so nothing in it ran): {reason}"
                ) from None
            if file.name in RANK0_MODEL_STATES:
                model_states = state
    if not isinstance(model_states, dict):
        raise CheckpointError(f"DeepSpeed checkpoint {str(checkpoint_dir)!r} has no rank 0 model states in {str(folder)!r}")
    return model_states
