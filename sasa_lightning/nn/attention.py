"""LocalSelfAttention2d: the paper's replacement for a spatial convolution."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .functional import check_options, local_self_attention
from .positional import POSITIONAL_MODES, RelativeEmbedding2d, sinusoidal_2d

LOGITS_MODES = ("qk+qr", "qr")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got {value!r}")


class LocalSelfAttention2d(nn.Module):
    """Multi-head attention over each pixel's k x k neighbourhood (eq. 3), NCHW in and out.

    q, k and v are dense 1x1 projections (the paper's parameter counts need them dense, not per
    head). positional: "relative" (q.r logits), "absolute" (2-D sinusoids added to the keys) or
    "none"; logits: "qk+qr" or "qr" (no key projection, relative positions only; Table 6).
    stride=2 attends at the input resolution and then average-pools 2x2, as the paper does where
    a ResNet block has a strided convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 7,
        heads: int = 8,
        stride: int = 1,
        positional: str = "relative",
        logits: str = "qk+qr",
        padding: str = "zeros",
        backend: str = "auto",
    ) -> None:
        super().__init__()
        _check_choice("positional", positional, POSITIONAL_MODES)
        _check_choice("logits", logits, LOGITS_MODES)
        check_options(kernel_size, padding, backend)
        _check_choice("stride", stride, (1, 2))
        if out_channels % heads:
            raise ConfigError(f"out_channels ({out_channels}) must be divisible by heads ({heads})")
        if logits == "qr" and positional != "relative":
            raise ConfigError(f"logits='qr' uses relative positions only, so positional must be 'relative', got {positional!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.heads, self.stride = kernel_size, heads, stride
        self.positional, self.logits, self.padding, self.backend = positional, logits, padding, backend

        self.query = nn.Parameter(torch.empty(out_channels, in_channels))
        self.key = nn.Parameter(torch.empty(out_channels, in_channels)) if logits == "qk+qr" else None
        self.value = nn.Parameter(torch.empty(out_channels, in_channels))
        self.relative = RelativeEmbedding2d(heads, out_channels // heads, kernel_size) if positional == "relative" else None
        # ceil_mode: an odd side gives ceil(H/2), as a strided 3x3 conv (and the 1x1 strided shortcut) does.
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for weight in (self.query, self.key, self.value):
            if weight is not None:
                nn.init.normal_(weight, std=self.in_channels**-0.5)

    def _positions(self, x: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """(key_bias, rel_rows, rel_cols) for an input like x; None where the layer has none."""
        key_bias = None
        if self.positional == "absolute":
            key_bias = sinusoidal_2d(self.out_channels, *x.shape[-2:], device=x.device, dtype=x.dtype)
        rel_rows = self.relative.rel_rows if self.relative is not None else None
        rel_cols = self.relative.rel_cols if self.relative is not None else None
        return key_bias, rel_rows, rel_cols

    def forward(self, x: Tensor) -> Tensor:
        key_bias, rel_rows, rel_cols = self._positions(x)
        out = local_self_attention(
            x, self.query, self.key, self.value, rel_rows, rel_cols, self.kernel_size, self.heads,
            key_bias, self.padding, self.backend, checked=True,
        )
        return self.pool(out)

    def attention_weights(self, x: Tensor) -> Tensor:
        """(B, heads, k*k, H, W): each pixel's softmax over its window for the input x, at x's
        resolution (before a stride-2 pool); window index = row offset * k + column offset. The
        reference backend's computation of this layer's forward, which every backend is tested
        equal to; with zero padding the window's cells outside the image take part."""
        from .backends import reference

        key_bias, rel_rows, rel_cols = self._positions(x)
        q, k, _ = reference.project_qkv(x, self.query, self.key, self.value, self.heads, key_bias)
        p = self.kernel_size // 2
        return reference.window_weights(q, k, rel_rows, rel_cols, self.kernel_size, self.padding, (p, p))

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, heads={self.heads}, "
            f"stride={self.stride}, positional={self.positional!r}, logits={self.logits!r}, "
            f"padding={self.padding!r}, backend={self.backend!r}"
        )

    def attention_macs(self, height: int, width: int) -> int:
        """Multiply-adds per image at input size height x width (the paper's convention).

        Attention runs at the input resolution (before any stride-2 pool): the dense projections,
        plus k^2 * d_out per pixel for each of the q.k logits, the q.r logits and the weighted
        sum of values.
        """
        pixels = height * width
        projections = sum(w is not None for w in (self.query, self.key, self.value))
        terms = 1 + (self.key is not None) + (self.relative is not None)
        return pixels * (projections * self.in_channels + terms * self.kernel_size**2) * self.out_channels
