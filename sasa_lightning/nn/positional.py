"""Position encodings of the layer (paper Table 5): learned relative offsets, or fixed 2-D sinusoids."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from ..errors import ConfigError

POSITIONAL_MODES = ("relative", "absolute", "none")


class RelativeEmbedding2d(nn.Module):
    """Row- and column-offset embeddings r_{a-i} and r_{b-j} for offsets -k//2..k//2.

    Each head has its own: the row embedding meets the first half of the head's query channels
    and the column embedding the second half, so a layer holds k * d_out parameters (paper 3.2).
    """

    no_weight_decay = ("rel_rows", "rel_cols")

    def __init__(self, heads: int, head_dim: int, kernel_size: int) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(
                f"relative embeddings split each head's channels into rows and columns, so channels per "
                f"head must be even; got {head_dim} (use out_channels divisible by 2 * heads)"
            )
        shape = (heads, kernel_size, head_dim // 2)
        # Unit-variance offsets against queries of ~unit variance give q.r logits on the scale of
        # the q.k logits, so neither term drowns the other at initialisation.
        self.rel_rows = nn.Parameter(torch.randn(shape) * head_dim**-0.5)
        self.rel_cols = nn.Parameter(torch.randn(shape) * head_dim**-0.5)


def sinusoidal_2d(channels: int, height: int, width: int, device=None, dtype=None) -> Tensor:
    """(1, channels, H, W) fixed embedding: first half encodes the row, second half the column."""
    if channels % 4:
        raise ConfigError(f"2-D sinusoidal embeddings need channels divisible by 4, got {channels}")
    quarter = channels // 4
    freqs = torch.exp(torch.arange(quarter, device=device, dtype=torch.float64) * (-math.log(10000.0) / quarter))

    def encode(length: int) -> Tensor:
        angles = torch.arange(length, device=device, dtype=torch.float64)[:, None] * freqs
        return torch.cat([angles.sin(), angles.cos()], dim=1).T  # (channels/2, length)

    rows = encode(height)[:, :, None].expand(-1, height, width)
    cols = encode(width)[:, None, :].expand(-1, height, width)
    return torch.cat([rows, cols]).unsqueeze(0).to(dtype or torch.get_default_dtype())
