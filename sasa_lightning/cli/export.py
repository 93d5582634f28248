"""`sasa export --format state_dict|exported|onnx`: a trained model for use outside this package's
training loop, with its EMA weights when the checkpoint has them.

- state_dict: the inference weights alone (any registry model, detectors too), for people who
  bring their own loop: `create_model(name, ...).load_state_dict(torch.load(f, weights_only=True))`.
- exported: a classifier as a torch.export program with a free batch size (`torch.export.load`);
  its attention layers are the package's custom ops, so the loading process imports
  sasa_lightning first.
- onnx: a classifier as an ONNX model with a free batch axis, for onnxruntime and other
  runtimes. The attention is exported through the reference backend's formulation (unfold,
  matmul, softmax: standard opset operators), not as a custom ONNX op.

Each file is written under a temporary name and renamed, so a failed export leaves nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..atomic import atomic_write, make_parent
from ..checkpoint import inference_weights, load_classifier, read_checkpoint, readable_checkpoint
from ..errors import ConfigError

OPSET = 18


def _check_image_size(image_size: int) -> None:
    if image_size < 32:
        raise ConfigError(f"--image-size must be at least 32 (the models reduce it 32 times), got {image_size}")


def _example(image_size: int) -> tuple[torch.Tensor]:
    return (torch.randn(2, 3, image_size, image_size),)


def _dynamic_batch() -> dict:
    return {"x": {0: torch.export.Dim("batch", min=1, max=4096)}}


def export_state_dict(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    with readable_checkpoint(checkpoint) as file:
        weights = inference_weights(read_checkpoint(file))
    make_parent(out)
    return atomic_write(out, lambda partial: torch.save(weights, partial))


def export_program(checkpoint: str | os.PathLike, out: str | os.PathLike, image_size: int) -> Path:
    if Path(out).suffix != ".pt2":
        raise ConfigError(f"--format exported writes a .pt2 archive (torch.export.save), so the output's name ends in "
                          f".pt2; got {str(out)!r}")
    _check_image_size(image_size)
    model = load_classifier(checkpoint)
    program = torch.export.export(model, _example(image_size), dynamic_shapes=_dynamic_batch())
    make_parent(out)
    return atomic_write(out, lambda partial: torch.export.save(program, partial))


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, image_size: int) -> Path:
    _check_image_size(image_size)
    model = load_classifier(checkpoint, backend="reference")
    program = torch.onnx.export(model, _example(image_size), dynamic_shapes=_dynamic_batch(), input_names=["images"],
                                output_names=["logits"], opset_version=OPSET, dynamo=True, verbose=False)
    make_parent(out)
    return atomic_write(out, lambda partial: program.save(partial))


def export(checkpoint: str | os.PathLike, out: str | os.PathLike, format: str = "checkpoint",
           image_size: int = 224) -> Path:
    if format == "checkpoint":
        from ..distributed.export import export_deepspeed_checkpoint

        return export_deepspeed_checkpoint(checkpoint, out)
    if format == "state_dict":
        return export_state_dict(checkpoint, out)
    if format == "exported":
        return export_program(checkpoint, out, image_size)
    if format == "onnx":
        return export_onnx(checkpoint, out, image_size)
    raise ValueError(f"unknown export format {format!r}")
