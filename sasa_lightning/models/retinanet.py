"""RetinaNet with a registry ResNet backbone and conv or attention FPN and heads (paper Table 2).

The detector is torchvision's RetinaNet (anchors, focal and box losses, box coding, resizing,
post-processing); only the backbone, the FPN and the heads' towers are ours. In the attention
variants (paper appendix A.3) every 3x3 conv of the FPN and of the two head towers becomes a
LocalSelfAttention2d with 256 output channels, k = 7 and 8 heads; where the conv was strided
(P6, P7) the attention is followed by a 2x2 average pool. The towers' value projections start
from N(0, 0.01), and each tower ends with a pointwise conv that mixes the attention heads. The
heads are shared across levels, as in RetinaNet.

Choices the paper leaves open, taken to match its parameter counts (`sasa summary --table 2`):
P6 is computed from P5, not C5 (torchvision's RetinaNet; from C5 the conv baseline would have
38.0 M parameters against the paper's 33.4 M), and the final class and box predictors stay
3x3 convs: their outputs (A x classes, A x 4) are not the 256 channels of the attention layers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ..errors import ConfigError
from ..nn import LocalSelfAttention2d
from .resnet import ALL_STAGES, RESNET_BLOCKS, ResNet, ResNetConfig

FPN_CHANNELS = 256  # the paper's d_out for the FPN and heads
ANCHOR_SIZE = 32  # RetinaNet's anchor side at P3, doubled at each level up to P7
LAYER_CHOICES = ("conv", "attention")
ATTENTION = dict(kernel_size=7, heads=8)


def _check(name: str, value: str) -> None:
    if value not in LAYER_CHOICES:
        raise ConfigError(f"{name} must be one of {LAYER_CHOICES}, got {value!r}")


class ResNetFPN(nn.Module):
    """C3-C5 of a ResNet, then an FPN with P3-P7 of `channels` each (an OrderedDict, as torchvision's)."""

    def __init__(self, body: ResNet, fpn: str = "conv", channels: int = FPN_CHANNELS, **attention) -> None:
        super().__init__()
        _check("fpn", fpn)
        body.fc = nn.Identity()  # the classifier's head is not part of a detector
        self.body = body
        widths = [stage[-1].conv3.out_channels for stage in body.stages][1:]
        self.fpn = FeaturePyramidNetwork(widths, channels, extra_blocks=LastLevelP6P7(channels, channels))
        if fpn == "attention":
            options = {**ATTENTION, **attention}
            for index in range(len(self.fpn.layer_blocks)):
                self.fpn.layer_blocks[index] = LocalSelfAttention2d(channels, channels, **options)
            extra = self.fpn.extra_blocks
            extra.p6 = LocalSelfAttention2d(channels, channels, stride=2, **options)
            extra.p7 = LocalSelfAttention2d(channels, channels, stride=2, **options)
        self.out_channels = channels

    def forward(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        c3, c4, c5 = self.body.forward_stages(images)[1:]
        return self.fpn(OrderedDict([("c3", c3), ("c4", c4), ("c5", c5)]))


def group_norm(channels: int) -> nn.GroupNorm:
    """The heads' optional norm (RetinaNet v2, FCOS): 32 groups, or fewer for narrow heads."""
    return nn.GroupNorm(min(32, channels // 4), channels)


def attention_tower(channels: int = FPN_CHANNELS, depth: int = 4, norm: bool = False, **attention) -> nn.Sequential:
    """`depth` attention layers with ReLU (and GroupNorm with norm), values from N(0, 0.01), then a
    pointwise conv mixing the heads."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layer = LocalSelfAttention2d(channels, channels, **{**ATTENTION, **attention})
        nn.init.normal_(layer.value, std=0.01)
        layers += [layer, *([group_norm(channels)] if norm else []), nn.ReLU(inplace=True)]
    mix = nn.Conv2d(channels, channels, 1)
    nn.init.normal_(mix.weight, std=0.01)
    nn.init.zeros_(mix.bias)
    return nn.Sequential(*layers, mix, nn.ReLU(inplace=True))


def retinanet_head(num_anchors: int, num_classes: int, heads: str = "conv", channels: int = FPN_CHANNELS,
                   norm: bool = False, **attention) -> RetinaNetHead:
    """Shared class and box heads; with norm, GroupNorm follows each layer of the towers (the
    paper's RetinaNet has none; with it a small detector learns much faster from scratch)."""
    _check("heads", heads)
    head = RetinaNetHead(channels, num_anchors, num_classes, norm_layer=group_norm if norm else None)
    if heads == "attention":
        head.classification_head.conv = attention_tower(channels, norm=norm, **attention)
        head.regression_head.conv = attention_tower(channels, norm=norm, **attention)
    return head


class DenseDetectorCore(nn.Module):
    """Backbone, FPN and heads of a detector without its resizing and post-processing: what
    `complexity()` counts (the paper's FLOPs are those of the network at 640x640)."""

    def __init__(self, detector: RetinaNet) -> None:
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.head(list(self.backbone(images).values()))


class JitteredInputTransform(GeneralizedRCNNTransform):
    """torchvision's normalise-resize-pad, without the resize in training.

    Training images come from the data module already jittered in scale and cropped to at most
    max_size a side (paper A.3); torchvision's resize would scale every one back to max_size and
    undo the jitter. Evaluation images are resized so that their longer side is max_size.
    """

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if self.training:
            return image, target
        return super().resize(image, target)


def retinanet(
    body: ResNet,
    num_classes: int = 80,
    fpn: str = "conv",
    heads: str = "conv",
    min_size: int = 640,
    max_size: int = 640,
    backend: str = "auto",
    channels: int = FPN_CHANNELS,
    anchor_size: int = ANCHOR_SIZE,
    kernel_size: int = ATTENTION["kernel_size"],
    head_norm: bool = False,
    **detector_options,
) -> RetinaNet:
    """torchvision's RetinaNet around `body`: 3 scales x 3 ratios per level, sides anchor_size (P3)
    to 16 x anchor_size (P7). channels and kernel_size are those of the FPN and heads; head_norm
    adds GroupNorm to the head towers."""
    attention = {"backend": backend, "kernel_size": kernel_size}
    backbone = ResNetFPN(body, fpn, channels, **attention)
    levels = tuple(anchor_size * 2**level for level in range(5))
    sizes = tuple((size, int(size * 2 ** (1 / 3)), int(size * 2 ** (2 / 3))) for size in levels)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = retinanet_head(anchors.num_anchors_per_location()[0], num_classes, heads, channels, head_norm,
                          **attention)
    detector = RetinaNet(backbone, num_classes, min_size=min_size, max_size=max_size, anchor_generator=anchors, head=head,
                         **detector_options)
    transform = detector.transform
    detector.transform = JitteredInputTransform(transform.min_size, transform.max_size, transform.image_mean,
                                                transform.image_std, fixed_size=transform.fixed_size)
    return detector



@dataclass(frozen=True)
class RetinaNetConfig:
    """A registry detector's options. The paper's (ResNet-50 body, 256-channel FPN and heads,
    k = 7) by default; stem, fpn and heads are "conv" or "attention"; base_width, channels,
    kernel_size, anchor_size and head_norm make the small detectors of the demo. min_size and
    max_size: evaluation images are resized to them. score_threshold: detections scoring less
    are dropped before non-maximum suppression."""

    num_classes: int = 80
    stem: str = "conv"
    fpn: str = "conv"
    heads: str = "conv"
    min_size: int = 640
    max_size: int = 640
    backend: str = "auto"
    base_width: int = 64
    channels: int = FPN_CHANNELS
    kernel_size: int = ATTENTION["kernel_size"]
    anchor_size: int = ANCHOR_SIZE
    head_norm: bool = False
    score_threshold: float = 0.05


def retinanet_resnet(depth: int, attention: bool, config: RetinaNetConfig) -> RetinaNet:
    """The detector of `config` on a ResNet-`depth` body, all of whose stages use attention if `attention`."""
    body = ResNet(ResNetConfig(RESNET_BLOCKS[depth], stem=config.stem, attention_stages=ALL_STAGES if attention else (),
                               kernel_size=config.kernel_size, backend=config.backend, base_width=config.base_width))
    return retinanet(body, config.num_classes, config.fpn, config.heads, config.min_size, config.max_size,
                     config.backend, config.channels, config.anchor_size, config.kernel_size, config.head_norm,
                     score_thresh=config.score_threshold)
