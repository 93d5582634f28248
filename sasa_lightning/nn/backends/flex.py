"""Local attention through FlexAttention (torch.nn.attention.flex_attention): fused kernels on CUDA.

Tokens: the queries are the image's pixels, the keys and values those of the zero-padded image,
(H + 2p) x (W + 2p). So "zeros" padding is exactly the reference's (a neighbour outside the image
is a real token with key and value 0), and "mask" padding leaves those tokens out of the mask.
The block mask keeps, for each query, the k x k keys of its window. score_mod adds q.r: the row
offset's and the column offset's logits, computed per query beforehand as (B, N, L, k) tensors
that score_mod indexes, so gradients reach q and the embeddings through them. No 1/sqrt(d)
(scale 1), as in eq. 3.

Token order: tiles of TILE pixels (flex's 128-token block), for queries and keys alike, so that
a block of queries meets a few nearly dense blocks of keys rather than thin slices of many
raster rows. Head dims are zero-padded to at least 16 and a power of two, which flex's kernels
want; zeros change neither the logits nor the output.

flex_attention is compiled (Triton kernels on CUDA, C++ on CPU; each new shape compiles once).
On CPU flex has no backward, so this backend serves inference there only.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

from ...compat import compile_failed
from . import compiled, reference
from .call import Call
from .errors import KernelFailed

TILE = (8, 16)  # rows x columns of pixels per 128-token block


@functools.cache
def _tiled_order(height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Raster indices of an H x W grid in tile order, their inverse, and each token's (row, column)."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    tile_rows, tile_cols = TILE
    tiles_per_row = -(-width // tile_cols)
    key = ((rows // tile_rows) * tiles_per_row + cols // tile_cols) * (tile_rows * tile_cols) + (
        (rows % tile_rows) * tile_cols + cols % tile_cols)
    order = torch.argsort(key)
    return order, torch.argsort(order), rows[order].int(), cols[order].int()


def _tokens(t: Tensor, order: Tensor, dim: int) -> Tensor:
    """(B, N, D, H, W) -> (B, N, H*W, dim) in tile order, head dim zero-padded to dim."""
    tokens = t.flatten(3).index_select(3, order).transpose(2, 3)
    return F.pad(tokens, (0, dim - t.shape[2]))


@functools.cache
def _block_mask(height: int, width: int, kernel_size: int, mask: bool, device: torch.device):
    from torch.nn.attention.flex_attention import create_block_mask

    p = kernel_size // 2
    _, _, q_rows, q_cols = _tiled_order(height, width, device)
    _, _, k_rows, k_cols = _tiled_order(height + 2 * p, width + 2 * p, device)

    def in_window(b, h, q_idx, kv_idx):
        a = k_rows[kv_idx] - q_rows[q_idx]
        c = k_cols[kv_idx] - q_cols[q_idx]
        keep = (a >= 0) & (a < kernel_size) & (c >= 0) & (c < kernel_size)
        if mask:
            row, col = k_rows[kv_idx], k_cols[kv_idx]
            keep = keep & (row >= p) & (row < height + p) & (col >= p) & (col < width + p)
        return keep

    return create_block_mask(in_window, None, None, height * width, (height + 2 * p) * (width + 2 * p),
                             device=device)


@functools.cache
def _compiled_flex_attention():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention)


def can_run(call: Call) -> str | None:
    if call.device.type == "cpu" and call.needs_grad:
        return "flex_attention has no backward on CPU; train with backend 'cpu' or 'auto' there"
    if call.device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "flex_attention compiles to Triton on CUDA, and triton is not installed"
    return None


def local_attention(*, q, k, v, rel_rows, rel_cols, kernel_size: int, padding: str) -> Tensor:
    batch, heads, dim, height, width = q.shape
    p = kernel_size // 2
    token_dim = max(16, 1 << (dim - 1).bit_length())
    order, inverse, q_rows, q_cols = _tiled_order(height, width, q.device)
    key_order, _, k_rows, k_cols = _tiled_order(height + 2 * p, width + 2 * p, q.device)
    pad = lambda t: F.pad(t, (p, p, p, p))  # noqa: E731
    query = _tokens(q, order, token_dim)
    key = _tokens(pad(k if k is not None else torch.zeros_like(q)), key_order, token_dim)
    value = _tokens(pad(v), key_order, token_dim)

    score_mod = None
    if rel_rows is not None:
        half = dim // 2
        # q.r per query and offset: (B, N, L, k) for rows (first half of q) and columns (second).
        row_logits = torch.einsum("bnld,nad->bnla", query[..., :half], rel_rows)
        col_logits = torch.einsum("bnld,ncd->bnlc", query[..., half:dim], rel_cols)

        def score_mod(score, b, h, q_idx, kv_idx):
            # Clamped: positions outside the window are masked, but their score is still formed.
            a = (k_rows[kv_idx] - q_rows[q_idx]).clamp(0, kernel_size - 1)
            c = (k_cols[kv_idx] - q_cols[q_idx]).clamp(0, kernel_size - 1)
            return score + row_logits[b, h, q_idx, a] + col_logits[b, h, q_idx, c]

    block_mask = _block_mask(height, width, kernel_size, padding == "mask", q.device)
    try:
        out = compiled.run_compiled(_compiled_flex_attention(), query, key, value, score_mod=score_mod,
                                    block_mask=block_mask, scale=1.0)
    except compile_failed() as error:  # "auto" goes on with the next backend
        raise KernelFailed(f"flex_attention did not compile: {str(error).splitlines()[0]}") from error
    out = out[..., :dim].transpose(2, 3).index_select(3, inverse)
    return out.reshape(batch, heads, dim, height, width)


def local_self_attention(
    *, x, query_weight, key_weight, value_weight, rel_rows, rel_cols, kernel_size, heads, key_bias, padding
) -> Tensor:
    q, k, v = reference.project_qkv(x, query_weight, key_weight, value_weight, heads, key_bias)
    return local_attention(q=q, k=k, v=v, rel_rows=rel_rows, rel_cols=rel_cols, kernel_size=kernel_size,
                           padding=padding).flatten(1, 2)
