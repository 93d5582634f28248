"""Checkpoints, in one place: reading one safely (weights_only; a DeepSpeed directory file by file,
distributed/safe_load.py), its hyper-parameters and inference (EMA) weights, the classifier or
detector it holds, and its weights loaded into another model for fine-tuning.

Writing them is Lightning's, through cli/checkpoint_io.py (atomic) and distributed/export.py
(a DeepSpeed directory consolidated into one file).
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .models import create_model


def read_checkpoint(path: str | os.PathLike) -> dict:
    """torch.load with weights_only=True (never unpickles arbitrary objects)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt, truncated, or not a PyTorch checkpoint at all (torch.save writes "
            f"zip archives; this file is not a complete one)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load raises many kinds on a foreign or damaged file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt, truncated, or holds objects other than tensors and plain values "
            f"(loaded with weights_only=True): {reason}"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(checkpoint).__name__}, not a state dict")
    return checkpoint


def inference_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model's weights from a Lightning checkpoint (its EMA weights when it has them) or a plain state dict."""
    state = checkpoint.get("state_dict", checkpoint)
    for prefix in ("ema.module.", "model."):
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if weights:
            return weights
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def checkpoint_hparams(path: str | os.PathLike) -> dict[str, Any]:
    """The hyper-parameters saved in a Lightning checkpoint file or a DeepSpeed checkpoint directory."""
    checkpoint = Path(path)
    if checkpoint.is_dir():
        from .distributed.safe_load import check_deepspeed_checkpoint

        state = check_deepspeed_checkpoint(checkpoint)
    else:
        state = read_checkpoint(checkpoint)
    hparams = state.get("hyper_parameters", {})
    if not isinstance(hparams, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds hyper-parameters of type {type(hparams).__name__}, not a dict")
    return hparams


@contextmanager
def readable_checkpoint(path: str | os.PathLike):
    """The checkpoint as one file: itself, or a DeepSpeed directory consolidated into a temporary one."""
    path = Path(path)
    if not path.is_dir():
        yield path
        return
    from .distributed.export import export_deepspeed_checkpoint

    with tempfile.TemporaryDirectory() as scratch:
        yield export_deepspeed_checkpoint(path, Path(scratch) / "consolidated.ckpt")


def load_classifier(path: str | os.PathLike, **overrides) -> nn.Module:
    """The checkpoint's classifier in eval mode, with its inference (EMA) weights; `overrides`
    go to create_model (such as backend="reference")."""
    with readable_checkpoint(path) as file:
        return classifier_from(read_checkpoint(file), path, **overrides)


def classifier_from(checkpoint: dict, path: str | os.PathLike, **overrides) -> nn.Module:
    """load_classifier for a checkpoint already read from `path`."""
    hparams = checkpoint.get("hyper_parameters") or {}
    name = hparams.get("model")
    if not isinstance(name, str):
        raise CheckpointError(f"checkpoint {str(path)!r} names no model in its hyper-parameters (sasa fit's checkpoints "
                              f"do); a plain state dict can only be exported with --format state_dict")
    if is_detector(hparams):
        raise CheckpointError(f"checkpoint {str(path)!r} is a detector's ({name}); --format exported and onnx take a "
                              f"classifier's, --format state_dict takes either")
    model = create_model(name, num_classes=hparams.get("num_classes", 1000),
                         **{**(hparams.get("model_options") or {}), **overrides})
    result = model.load_state_dict(inference_weights(checkpoint), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold the weights of its own model {name}: missing "
                              f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model.eval()


def is_detector(hparams: dict) -> bool:
    """Whether a checkpoint's hyper-parameters are an ObjectDetector's (a RetinaNet)."""
    return "ObjectDetector" in str(hparams.get("_class_path")) or str(hparams.get("model", "")).startswith("retinanet")


def detector_from(checkpoint: dict, path: str | os.PathLike) -> nn.Module:
    """The checkpoint's detector in eval mode, with its weights (a detector keeps no EMA)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    name = hparams.get("model")
    detector = create_model(name, num_classes=hparams.get("num_classes", 80), **(hparams.get("model_options") or {}))
    weights = {k[len("model."):]: v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith("model.")}
    result = detector.load_state_dict(weights, strict=False)
    if result.missing_keys:
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold the weights of its own model {name}: "
                              f"missing {result.missing_keys[:3]}")
    return detector.eval()


@dataclass
class LoadReport:
    loaded: int
    reinitialised: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"loaded {self.loaded} tensors"]
        for name, keys in (("re-initialised", self.reinitialised), ("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                parts.append(f"{name}: {', '.join(keys)}")
        return "; ".join(parts)


def load_for_finetuning(model: nn.Module, path: str | os.PathLike, head_prefixes: tuple[str, ...] = ("fc.",)) -> LoadReport:
    """Load every tensor of `model` from a checkpoint of the same architecture.

    The head (keys starting with head_prefixes) is kept freshly initialised when its shape
    differs (another number of classes). Anything else that differs - a missing or unexpected
    tensor, or another shape - means another architecture, and is refused.
    """
    checkpoint = read_checkpoint(path)
    weights = inference_weights(checkpoint)
    ours = model.state_dict()
    is_head = lambda key: key.startswith(head_prefixes)
    missing = sorted(k for k in ours if k not in weights and not is_head(k))
    unexpected = sorted(k for k in weights if k not in ours and not is_head(k))
    mismatched = sorted(k for k in ours if k in weights and not is_head(k) and weights[k].shape != ours[k].shape)
    if missing or unexpected or mismatched:
        trained = checkpoint.get("hyper_parameters", {}).get("model")
        origin = f" (it holds a {trained})" if trained else ""
        examples = [f"{k}: {tuple(weights[k].shape)} vs ours {tuple(ours[k].shape)}" for k in mismatched[:2]]
        examples += [f"missing {k}" for k in missing[:2]] + [f"unexpected {k}" for k in unexpected[:2]]
        raise CheckpointError(
            f"checkpoint {str(path)!r} is of a different architecture{origin}: {len(mismatched)} tensors differ in "
            f"shape, {len(missing)} missing, {len(unexpected)} unexpected (e.g. {'; '.join(examples)})"
        )
    report = LoadReport(loaded=0)
    for key, value in ours.items():
        if key in weights and weights[key].shape == value.shape:
            value.copy_(weights[key])
            report.loaded += 1
        elif key in weights:
            report.reinitialised.append(key)
        else:
            report.missing.append(key)
    report.unexpected = sorted(k for k in weights if k not in ours)
    return report


def load_backbone(body: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a classifier checkpoint's weights into a detector's backbone body.

    The classifier's head (and anything else the body lacks) is reported as unexpected, and body
    tensors the checkpoint lacks as missing (they keep their initialisation). A tensor of another
    shape, or a checkpoint sharing no tensor with the body, is another architecture, and refused.
    """
    checkpoint = read_checkpoint(path)
    weights = inference_weights(checkpoint)
    ours = body.state_dict()
    shared = [k for k in ours if k in weights]
    mismatched = [k for k in shared if weights[k].shape != ours[k].shape]
    if mismatched or not shared:
        trained = checkpoint.get("hyper_parameters", {}).get("model")
        origin = f" (it holds a {trained})" if trained else ""
        detail = (f"{len(mismatched)} tensors differ in shape, e.g. {mismatched[0]}: {tuple(weights[mismatched[0]].shape)} "
                  f"vs ours {tuple(ours[mismatched[0]].shape)}" if mismatched else "no tensor names in common")
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit the detector's backbone{origin}: {detail}")
    for key in shared:
        ours[key].copy_(weights[key])
    return LoadReport(
        loaded=len(shared),
        missing=sorted(k for k in ours if k not in weights),
        unexpected=sorted(k for k in weights if k not in ours),
    )
