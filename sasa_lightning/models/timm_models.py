"""The registry's classifiers as timm models, registered when timm is installed (importing
sasa_lightning.models does it): `timm.create_model("sasa_resnet50", num_classes=10)`, with
timm's pretrained_cfg (input size, normalisation, crop) and its feature extractors
(`features_only=True, out_indices=(1, 2, 3)`: the stages' outputs, C2-C5 as indices 0-3).

timm names: the SASA models keep theirs; the conv baselines are paper_resnet26/38/50, since
timm's own resnet26 and resnet50 are other models (timm's resnet26 has 2-2-2-2 blocks, the
paper's 1-2-4-1). The detectors are not classifiers, so they are not timm models. No weights are
published, so pretrained=True is refused; a trained checkpoint's weights come from
`sasa export --format state_dict`.
"""

from __future__ import annotations

import functools
from typing import Callable

from torch import nn

from ..errors import ConfigError
from .registry import create_model

# Our registry name -> its timm name.
TIMM_NAMES = {
    **{f"sasa_resnet{depth}": f"sasa_resnet{depth}" for depth in (26, 38, 50)},
    **{f"resnet{depth}": f"paper_resnet{depth}" for depth in (26, 38, 50)},
}
# The paper's ImageNet evaluation (PAPER.md): 224 x 224 centre crops of images resized to 256.
CROP_PCT = 224 / 256


def _create(name: str, in_chans: int = 3, drop_rate: float = 0.0, **overrides) -> nn.Module:
    """create_model(name, **overrides), taking the options timm's train script always passes
    where they mean what the model is (3 channels, no dropout) and refusing them otherwise."""
    if in_chans != 3:
        raise ConfigError(f"{name} takes 3 input channels (RGB), not in_chans={in_chans}")
    if drop_rate:
        raise ConfigError(f"{name} has no dropout before its classifier (the paper uses none); drop_rate must be 0")
    return create_model(name, **overrides)


def pretrained_cfg(timm_name: str) -> dict:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    return dict(
        architecture=timm_name, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=CROP_PCT,
        interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, num_classes=1000,
        first_conv="stem.0" if timm_name.startswith("paper") else "stem", classifier="fc",
        license="apache-2.0", paper_name="Stand-Alone Self-Attention in Vision Models", paper_ids="arXiv:1906.05909",
    )


def _entrypoint(name: str, timm_name: str) -> Callable[..., nn.Module]:
    def build(pretrained: bool = False, **kwargs) -> nn.Module:
        from timm.models import build_model_with_cfg

        if pretrained:
            raise ConfigError(f"no pretrained weights are published for {timm_name}; create it with pretrained=False "
                              f"and load a checkpoint's weights (sasa export --format state_dict)")
        return build_model_with_cfg(
            functools.partial(_create, name), timm_name, pretrained=False,
            feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **kwargs)

    build.__name__ = build.__qualname__ = timm_name  # timm registers an entry point by its name
    build.__module__ = __name__
    build.__doc__ = f"{timm_name}: sasa_lightning's {name} (create_model's options are keyword arguments)."
    return build


def register_with_timm() -> bool:
    """Register every classifier with timm; False when timm is not installed."""
    try:
        from timm.models import register_model
    except ImportError:
        return False
    for name, timm_name in TIMM_NAMES.items():
        default_cfgs[timm_name] = pretrained_cfg(timm_name)
        register_model(_entrypoint(name, timm_name))
    return True


# timm's register_model reads each entry point's pretrained_cfg from its module's default_cfgs.
default_cfgs: dict[str, dict] = {}
