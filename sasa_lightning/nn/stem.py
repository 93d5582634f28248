"""AttentionStem: the paper's replacement for the 7x7 convolution stem (appendix A.1, Table 7)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .positional import RelativeEmbedding2d

STEM_VALUES = ("spatially_aware", "conv", "plain")


class AttentionStem(nn.Module):
    """Self-attention within each block x block patch of the image, then BN, ReLU, block max pool.

    Every pixel attends to the pixels of its own non-overlapping block (q.k + q.r logits, the
    relative offsets spanning -(block-1)..block-1). The values (Table 7):
    - "spatially_aware": v_ab = (sum_m p(a,b,m) W_V^m) x_ab with p(a,b,m) =
      softmax_m((emb_row(a) + emb_col(b)) . nu_m), (a, b) the position inside the block; p is
      shared by all heads. The paper's final stem.
    - "conv": values from a 3x3 convolution ("spatial convolution for values").
    - "plain": v = W_V x, the stand-alone attention layer applied to pixels.
    The stride is block (4: the same total stride as the conv stem's 7x7/2 conv and 3x3/2 pool).
    ReLU after BN is our choice (the paper names BN and the pool): it keeps the stem's output
    non-negative like the conv stem's.
    """

    no_weight_decay = ("emb_row", "emb_col", "nu")  # position embeddings and mixture logits

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 64,
        heads: int = 4,
        block: int = 4,
        values: str = "spatially_aware",
        mixtures: int = 4,
    ) -> None:
        super().__init__()
        if values not in STEM_VALUES:
            raise ConfigError(f"values must be one of {STEM_VALUES}, got {values!r}")
        if out_channels % heads:
            raise ConfigError(f"out_channels ({out_channels}) must be divisible by heads ({heads})")
        self.in_channels, self.out_channels, self.heads, self.block = in_channels, out_channels, heads, block
        self.values, self.mixtures = values, mixtures
        self.query = nn.Parameter(torch.randn(out_channels, in_channels) * in_channels**-0.5)
        self.key = nn.Parameter(torch.randn(out_channels, in_channels) * in_channels**-0.5)
        self.relative = RelativeEmbedding2d(heads, out_channels // heads, 2 * block - 1)
        if values == "spatially_aware":
            self.value = nn.Parameter(torch.randn(mixtures, out_channels, in_channels) * in_channels**-0.5)
            self.emb_row = nn.Parameter(torch.randn(block, out_channels) * out_channels**-0.5)
            self.emb_col = nn.Parameter(torch.randn(block, out_channels) * out_channels**-0.5)
            self.nu = nn.Parameter(torch.randn(mixtures, out_channels) * out_channels**-0.5)
        elif values == "conv":
            self.value = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        else:
            self.value = nn.Parameter(torch.randn(out_channels, in_channels) * in_channels**-0.5)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(block, block)
        offsets = torch.arange(block)
        row_of, col_of = offsets.repeat_interleave(block), offsets.repeat(block)
        # For query position i of a block flattened row-major and key row (column) t: the index of
        # the offset t - row(i) + block - 1 in the relative embeddings, (block^2, block).
        self.register_buffer("row_offset_index", offsets[None, :] - row_of[:, None] + block - 1, persistent=False)
        self.register_buffer("col_offset_index", offsets[None, :] - col_of[:, None] + block - 1, persistent=False)
        # Each key position's row and column, one-hot: (block^2, 2 block).
        self.register_buffer("key_position", torch.cat([F.one_hot(row_of, block), F.one_hot(col_of, block)], 1).float(),
                             persistent=False)

    def mixture_weights(self) -> Tensor:
        """p(a, b, m): (block, block, mixtures), a softmax over the mixtures."""
        position = self.emb_row[:, None, :] + self.emb_col[None, :, :]
        return (position @ self.nu.T).softmax(dim=-1)

    def _values(self, x: Tensor) -> Tensor:
        if self.values == "conv":
            return self.value(x)
        if self.values == "plain":
            return torch.einsum("oi,bihw->bohw", self.value, x)
        batch, channels, height, width = x.shape
        per_position = torch.einsum("pqm,moi->pqoi", self.mixture_weights(), self.value)
        blocks = x.view(batch, channels, height // self.block, self.block, width // self.block, self.block)
        v = torch.einsum("pqoi,bixpyq->boxpyq", per_position, blocks)
        return v.reshape(batch, self.out_channels, height, width)

    def _to_blocks(self, t: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, heads, H/block, W/block, block*block, head_dim)."""
        batch, _, height, width = t.shape
        s = self.block
        t = t.view(batch, self.heads, -1, height // s, s, width // s, s)
        return t.permute(0, 1, 3, 5, 4, 6, 2).flatten(4, 5)

    def attend(self, x: Tensor) -> Tensor:
        """The attention part alone: (B, C_in, H, W) -> (B, C_out, H, W).

        The q.r logits enter as part of one product: a query's row and column logits for each
        key row and column of its block (U, 2 block values) are appended to q, each key's one-hot
        row and column to k, so q_aug . k_aug = q.k + q.r_row + q.r_col exactly; the softmax and
        the weighted sum are then one fused scaled_dot_product_attention (scale 1, eq. 3), on
        tensor cores on a GPU, with no (block^2 x block^2) logits or gathers kept for backward."""
        batch, _, height, width = x.shape
        if height % self.block or width % self.block:
            raise ConfigError(f"AttentionStem needs H and W divisible by {self.block}, got {height}x{width}")
        q = self._to_blocks(torch.einsum("oi,bihw->bohw", self.query, x))
        k = self._to_blocks(torch.einsum("oi,bihw->bohw", self.key, x))
        v = self._to_blocks(self._values(x))
        half = q.shape[-1] // 2
        # (heads, block^2, block, head_dim / 2): for query position i, the embedding of each key row's offset.
        rows = self.relative.rel_rows[:, self.row_offset_index]
        cols = self.relative.rel_cols[:, self.col_offset_index]
        relative = torch.cat([torch.einsum("bnxyid,nitd->bnxyit", q[..., :half], rows),
                              torch.einsum("bnxyid,nitd->bnxyit", q[..., half:], cols)], -1)
        key_position = self.key_position.to(k.dtype).expand(*k.shape[:-1], -1)
        q_aug = torch.cat([q, relative.to(q.dtype)], -1).flatten(1, 3)
        k_aug = torch.cat([k, key_position], -1).flatten(1, 3)
        out = F.scaled_dot_product_attention(q_aug, k_aug, v.flatten(1, 3), scale=1.0)
        s = self.block
        out = out.unflatten(1, q.shape[1:4]).unflatten(4, (s, s)).permute(0, 1, 6, 2, 4, 3, 5)
        return out.reshape(batch, self.out_channels, height, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.act(self.norm(self.attend(x))))

    def attention_macs(self, height: int, width: int) -> int:
        """Multiply-adds per image done by this module's own parameters (not by child convs).

        The paper's convention: projections, plus block^2 * d each for the q.k logits, the q.r
        logits and the weighted sum of values, per pixel.
        """
        pixels = height * width
        projections = 2 if self.values == "conv" else 3
        macs = pixels * projections * self.out_channels * self.in_channels
        if self.values == "spatially_aware":
            macs += self.block**2 * self.mixtures * self.out_channels * self.in_channels
        return macs + pixels * 3 * self.block**2 * self.out_channels
