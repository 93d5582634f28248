"""Models by name: `create_model("sasa_resnet50", kernel_size=9)`, `list_models()`.

Each name is a function below, registered by its own name, whose options are the fields of a
config dataclass (ResNetConfig, RetinaNetConfig) less those the name fixes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import nn
from torchvision.models.detection import RetinaNet

from ..errors import ConfigError
from .resnet import ALL_STAGES, RESNET_BLOCKS, ResNet, ResNetConfig
from .retinanet import RetinaNetConfig, retinanet_resnet

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_OPTIONS: dict[str, tuple[str, ...]] = {}


def register_model(config: type, fixed: tuple[str, ...] = ()) -> Callable:
    """Decorator: register a builder under its function name; create_model accepts the fields of
    the dataclass `config` except those the name `fixed`."""

    def register(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = builder.__name__
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = builder
        _OPTIONS[name] = tuple(field.name for field in dataclasses.fields(config) if field.name not in fixed)
        return builder

    return register


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model, with any of its options overridden by keyword."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    unknown = sorted(set(overrides) - set(_OPTIONS[name]))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for model {name!r}; valid options: {list(_OPTIONS[name])}")
    return _MODELS[name](**overrides)


def _conv(depth: int, overrides: dict) -> ResNet:
    return ResNet(ResNetConfig(RESNET_BLOCKS[depth], **overrides))


def _sasa(depth: int, overrides: dict) -> ResNet:
    return ResNet(ResNetConfig(RESNET_BLOCKS[depth], **{"attention_stages": ALL_STAGES, **overrides}))


@register_model(ResNetConfig, fixed=("blocks",))
def resnet26(**overrides: Any) -> ResNet:
    """The paper's conv baseline ResNet-26: bottleneck blocks 1-2-4-1, 3x3 convolutions, conv stem."""
    return _conv(26, overrides)


@register_model(ResNetConfig, fixed=("blocks",))
def resnet38(**overrides: Any) -> ResNet:
    """The paper's conv baseline ResNet-38: bottleneck blocks 2-3-5-2."""
    return _conv(38, overrides)


@register_model(ResNetConfig, fixed=("blocks",))
def resnet50(**overrides: Any) -> ResNet:
    """The paper's conv baseline ResNet-50 (v1.5, as torchvision's): bottleneck blocks 3-4-6-3."""
    return _conv(50, overrides)


@register_model(ResNetConfig, fixed=("blocks",))
def sasa_resnet26(**overrides: Any) -> ResNet:
    """ResNet-26 with local self-attention (k = 7, 8 heads) in place of every 3x3 conv, conv stem
    (stem="attention": the paper's full-attention model)."""
    return _sasa(26, overrides)


@register_model(ResNetConfig, fixed=("blocks",))
def sasa_resnet38(**overrides: Any) -> ResNet:
    """ResNet-38 with local self-attention in every stage (as sasa_resnet26)."""
    return _sasa(38, overrides)


@register_model(ResNetConfig, fixed=("blocks",))
def sasa_resnet50(**overrides: Any) -> ResNet:
    """ResNet-50 with local self-attention in every stage (as sasa_resnet26); attention_stages
    picks the stages (paper Table 3)."""
    return _sasa(50, overrides)


@register_model(RetinaNetConfig)
def retinanet_resnet50(**overrides: Any) -> RetinaNet:
    """The paper's conv RetinaNet: ResNet-50 body, FPN P3-P7 and heads of 256 channels (Table 2)."""
    return retinanet_resnet(50, attention=False, config=RetinaNetConfig(**overrides))


@register_model(RetinaNetConfig)
def retinanet_sasa_resnet50(**overrides: Any) -> RetinaNet:
    """RetinaNet on SASA-ResNet-50; stem, fpn and heads="attention" make the other rows of Table 2."""
    return retinanet_resnet(50, attention=True, config=RetinaNetConfig(**overrides))


@register_model(RetinaNetConfig)
def retinanet_sasa_resnet26(**overrides: Any) -> RetinaNet:
    """RetinaNet on SASA-ResNet-26: with base_width 16 and 32 channels, the shapes demo's small detector."""
    return retinanet_resnet(26, attention=True, config=RetinaNetConfig(**overrides))
