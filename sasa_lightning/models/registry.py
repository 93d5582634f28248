"""Models by name: `create_model("sasa_resnet50", kernel_size=9)`, `list_models()`."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError
from .resnet import ResNet
from .retinanet import retinanet

_MODELS: dict[str, Callable[..., nn.Module]] = {}

# Bottleneck blocks per stage (paper section 4.1).
RESNET_BLOCKS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}
ALL_STAGES = (1, 2, 3, 4)


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = builder


def list_models() -> list[str]:
    return sorted(_MODELS)


def _options(builder: Callable[..., nn.Module]) -> list[str]:
    return [p for p in inspect.signature(builder).parameters if p != "blocks"]


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, with any of its options overridden by keyword."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    builder = _MODELS[name]
    unknown = sorted(set(overrides) - set(_options(builder)))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for model {name!r}; valid options: {_options(builder)}")
    return builder(**overrides)


def _resnet(depth: int, attention: bool) -> Callable[..., nn.Module]:
    def build(**options: Any) -> nn.Module:
        options.setdefault("attention_stages", ALL_STAGES if attention else ())
        return ResNet(RESNET_BLOCKS[depth], **options)

    build.__signature__ = inspect.signature(ResNet)  # so create_model can name the valid options
    return build


for _depth in RESNET_BLOCKS:
    register_model(f"resnet{_depth}", _resnet(_depth, attention=False))
    register_model(f"sasa_resnet{_depth}", _resnet(_depth, attention=True))


def _retinanet(attention: bool) -> Callable[..., nn.Module]:
    """The paper's detectors (ResNet-50, 256-channel FPN and heads, k = 7) by default; depth,
    base_width, channels, kernel_size, anchor_size and head_norm make the small ones of the demo.
    score_threshold: detections scoring less are dropped before non-maximum suppression."""

    def build(
        num_classes: int = 80,
        stem: str = "conv",
        fpn: str = "conv",
        heads: str = "conv",
        min_size: int = 640,
        max_size: int = 640,
        backend: str = "auto",
        depth: int = 50,
        base_width: int = 64,
        channels: int = 256,
        kernel_size: int = 7,
        anchor_size: int = 32,
        head_norm: bool = False,
        score_threshold: float = 0.05,
    ) -> nn.Module:
        if depth not in RESNET_BLOCKS:
            raise ConfigError(f"depth must be one of {sorted(RESNET_BLOCKS)}, got {depth}")
        body = ResNet(RESNET_BLOCKS[depth], stem=stem, attention_stages=ALL_STAGES if attention else (),
                      kernel_size=kernel_size, backend=backend, base_width=base_width)
        return retinanet(body, num_classes, fpn, heads, min_size, max_size, backend, channels, anchor_size, kernel_size,
                         head_norm, score_thresh=score_threshold)

    return build


register_model("retinanet_resnet50", _retinanet(attention=False))
register_model("retinanet_sasa_resnet50", _retinanet(attention=True))
