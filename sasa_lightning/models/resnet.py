"""Conv and SASA ResNets from one parameterised bottleneck (paper section 4.1).

The conv baseline is ResNet v1.5 (stride on the 3x3 conv, as torchvision). SASA variants swap
each 3x3 conv of the chosen stages for LocalSelfAttention2d, and optionally the 7x7 stem for
AttentionStem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from torch import Tensor, nn

from ..nn import AttentionStem, LocalSelfAttention2d
from ..errors import ConfigError

STAGES = 4
EXPANSION = 4
STEMS = ("conv", "attention")


class Bottleneck(nn.Module):
    """1x1 reduce -> spatial (3x3 conv or local attention) -> 1x1 expand, plus the shortcut."""

    def __init__(self, in_channels: int, width: int, stride: int, spatial: nn.Module) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.spatial = spatial
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.spatial(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


# Bottleneck blocks per stage (paper section 4.1).
RESNET_BLOCKS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}
ALL_STAGES = (1, 2, 3, 4)


@dataclass(frozen=True)
class ResNetConfig:
    """What a ResNet is: blocks per stage; stem "conv" (7x7/2 conv + 3x3/2 max pool) or
    "attention" (AttentionStem, with stem_heads and stem_values); attention_stages, the stages
    (numbered 1-4, as the paper's "groups") whose spatial layers are LocalSelfAttention2d, with
    that layer's kernel_size, heads, positional, logits, padding and backend. base_width is the
    first stage's bottleneck width, doubled at each stage (64: the paper's 64-128-256-512;
    narrower ResNets are for small demos).
    """

    blocks: Sequence[int]
    stem: str = "conv"
    attention_stages: Sequence[int] = ()
    num_classes: int = 1000
    kernel_size: int = 7
    heads: int = 8
    positional: str = "relative"
    logits: str = "qk+qr"
    padding: str = "zeros"
    backend: str = "auto"
    stem_heads: int = 4
    stem_values: str = "spatially_aware"
    base_width: int = 64

    def __post_init__(self) -> None:
        if self.stem not in STEMS:
            raise ConfigError(f"stem must be one of {STEMS}, got {self.stem!r}")
        if len(self.blocks) != STAGES:
            raise ConfigError(f"blocks must give {STAGES} stages, got {tuple(self.blocks)}")
        if self.base_width < 1 or (self.attention_stages and self.base_width % self.heads):
            raise ConfigError(f"base_width must be a positive multiple of the attention heads ({self.heads}), "
                              f"got {self.base_width}")
        if any(stage not in ALL_STAGES for stage in self.attention_stages):
            raise ConfigError(f"attention_stages are stage numbers 1-4, got {tuple(self.attention_stages)}")

    def attention(self) -> dict:
        """The options of each LocalSelfAttention2d."""
        return dict(kernel_size=self.kernel_size, heads=self.heads, positional=self.positional, logits=self.logits,
                    padding=self.padding, backend=self.backend)


class ResNet(nn.Module):
    """A bottleneck ResNet whose stages may use attention (ResNetConfig)."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        blocks, base_width, stem = config.blocks, config.base_width, config.stem
        widths = [base_width * 2**stage for stage in range(STAGES)]
        attention = config.attention()

        if stem == "conv":
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        else:
            self.stem = AttentionStem(3, widths[0], heads=config.stem_heads, values=config.stem_values)

        stages = []
        in_channels = widths[0]
        for number, (width, count) in enumerate(zip(widths, blocks), start=1):
            layers = []
            for index in range(count):
                stride = 2 if index == 0 and number > 1 else 1
                if number in config.attention_stages:
                    spatial = LocalSelfAttention2d(width, width, stride=stride, **attention)
                else:
                    spatial = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
                layers.append(Bottleneck(in_channels, width, stride, spatial))
                in_channels = width * EXPANSION
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_classes, self.num_features = config.num_classes, in_channels
        self.fc = nn.Linear(in_channels, config.num_classes)
        # The stages' outputs as timm's feature extractors (features_only=True) name them.
        self.feature_info = [dict(num_chs=width * EXPANSION, reduction=4 * 2**index, module=f"stages.{index}")
                             for index, width in enumerate(widths)]
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        # Each residual branch starts as the identity (Goyal et al. 2017): its last BN is zero.
        for module in self.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """The outputs of the four stages (C2-C5), for detection backbones."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map (timm's name and meaning)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Pooled features (pre_logits) or logits from forward_features' map."""
        x = self.pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head for num_classes (timm's fine-tuning entry point); the pool stays the average."""
        if global_pool not in (None, "avg"):
            raise ConfigError(f"global_pool must be 'avg' (the paper's), got {global_pool!r}")
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
