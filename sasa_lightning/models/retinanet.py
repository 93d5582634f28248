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

from torch import Tensor, nn
from torchvision.models.detection import RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ..nn import LocalSelfAttention2d
from .resnet import ResNet

FPN_CHANNELS = 256
LAYER_CHOICES = ("conv", "attention")
ATTENTION = dict(kernel_size=7, heads=8)


def _check(name: str, value: str) -> None:
    if value not in LAYER_CHOICES:
        raise ValueError(f"{name} must be one of {LAYER_CHOICES}, got {value!r}")


class ResNetFPN(nn.Module):
    """C3-C5 of a ResNet, then an FPN with P3-P7 of 256 channels each (an OrderedDict, as torchvision's)."""

    def __init__(self, body: ResNet, fpn: str = "conv", **attention) -> None:
        super().__init__()
        _check("fpn", fpn)
        body.fc = nn.Identity()  # the classifier's head is not part of a detector
        self.body = body
        widths = [stage[-1].conv3.out_channels for stage in body.stages][1:]
        self.fpn = FeaturePyramidNetwork(widths, FPN_CHANNELS, extra_blocks=LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
        if fpn == "attention":
            options = {**ATTENTION, **attention}
            for index in range(len(self.fpn.layer_blocks)):
                self.fpn.layer_blocks[index] = LocalSelfAttention2d(FPN_CHANNELS, FPN_CHANNELS, **options)
            extra = self.fpn.extra_blocks
            extra.p6 = LocalSelfAttention2d(FPN_CHANNELS, FPN_CHANNELS, stride=2, **options)
            extra.p7 = LocalSelfAttention2d(FPN_CHANNELS, FPN_CHANNELS, stride=2, **options)
        self.out_channels = FPN_CHANNELS

    def forward(self, images: Tensor) -> "OrderedDict[str, Tensor]":
        c3, c4, c5 = self.body.forward_features(images)[1:]
        return self.fpn(OrderedDict([("c3", c3), ("c4", c4), ("c5", c5)]))


def attention_tower(depth: int = 4, **attention) -> nn.Sequential:
    """`depth` attention layers with ReLU, values from N(0, 0.01), then a pointwise conv mixing the heads."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layer = LocalSelfAttention2d(FPN_CHANNELS, FPN_CHANNELS, **{**ATTENTION, **attention})
        nn.init.normal_(layer.value, std=0.01)
        layers += [layer, nn.ReLU(inplace=True)]
    mix = nn.Conv2d(FPN_CHANNELS, FPN_CHANNELS, 1)
    nn.init.normal_(mix.weight, std=0.01)
    nn.init.zeros_(mix.bias)
    return nn.Sequential(*layers, mix, nn.ReLU(inplace=True))


def retinanet_head(num_anchors: int, num_classes: int, heads: str = "conv", **attention) -> RetinaNetHead:
    _check("heads", heads)
    head = RetinaNetHead(FPN_CHANNELS, num_anchors, num_classes)
    if heads == "attention":
        head.classification_head.conv = attention_tower(**attention)
        head.regression_head.conv = attention_tower(**attention)
    return head


class DenseDetectorCore(nn.Module):
    """Backbone, FPN and heads of a detector without its resizing and post-processing: what
    `complexity()` counts (the paper's FLOPs are those of the network at 640x640)."""

    def __init__(self, detector: RetinaNet) -> None:
        super().__init__()
        self.backbone, self.head = detector.backbone, detector.head

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.head(list(self.backbone(images).values()))


def retinanet(
    body: ResNet,
    num_classes: int = 80,
    fpn: str = "conv",
    heads: str = "conv",
    min_size: int = 640,
    max_size: int = 640,
    backend: str = "auto",
    **detector_options,
) -> RetinaNet:
    """torchvision's RetinaNet (3 scales x 3 ratios per level, sizes 32-512) around `body`."""
    attention = {"backend": backend}
    backbone = ResNetFPN(body, fpn, **attention)
    sizes = tuple((size, int(size * 2 ** (1 / 3)), int(size * 2 ** (2 / 3))) for size in (32, 64, 128, 256, 512))
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    head = retinanet_head(anchors.num_anchors_per_location()[0], num_classes, heads, **attention)
    return RetinaNet(backbone, num_classes, min_size=min_size, max_size=max_size, anchor_generator=anchors, head=head,
                     **detector_options)

