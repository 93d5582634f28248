"""The readable implementation of eq. 3: every neighbourhood unfolded, then a softmax over it.

It holds k^2 copies of keys and values for the whole image, so it is the oracle for the other
backends, not something to train with. `window_attention` is also the per-tile computation of
the chunked backend, which is why it accepts keys and values with only partial row context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .call import Call


def _windows(x: Tensor, kernel_size: int, pad: tuple[int, int, int, int]) -> Tensor:
    """(B, N, D, rows, W) -> (B, N, D, k*k, out_rows, W): each pixel's k x k neighbourhood.

    `pad` is (left, right, top, bottom) zero padding; window index = row offset * k + col offset.
    """
    batch, heads, dim, _, _ = x.shape
    padded = F.pad(x.flatten(1, 2), pad)
    out_rows = padded.shape[-2] - kernel_size + 1
    out_cols = padded.shape[-1] - kernel_size + 1
    unfolded = F.unfold(padded, kernel_size)
    return unfolded.view(batch, heads, dim, kernel_size * kernel_size, out_rows, out_cols)


def can_run(call: Call) -> str | None:
    return None  # anywhere, in any floating dtype, with gradients


def window_weights(
    q: Tensor,
    k: Tensor | None,
    rel_rows: Tensor | None,
    rel_cols: Tensor | None,
    kernel_size: int,
    padding: str,
    pad_rows: tuple[int, int],
) -> Tensor:
    """(B, N, k*k, rows, W): each query's softmax over its window (window index = row offset * k
    + column offset); the shapes and pad_rows as window_attention's."""
    p = kernel_size // 2
    pad = (p, p, pad_rows[0], pad_rows[1])
    logits = None
    if k is not None:
        logits = (q.unsqueeze(3) * _windows(k, kernel_size, pad)).sum(2)
    if rel_rows is not None:
        half = q.shape[2] // 2
        row_logits = torch.einsum("bndhw,nkd->bnkhw", q[:, :, :half], rel_rows)
        col_logits = torch.einsum("bndhw,nkd->bnkhw", q[:, :, half:], rel_cols)
        rel_logits = (row_logits.unsqueeze(3) + col_logits.unsqueeze(2)).flatten(2, 3)
        logits = rel_logits if logits is None else logits + rel_logits
    if padding == "mask":
        context_rows = q.shape[3] + 2 * p - sum(pad_rows)  # the rows of the image the windows reach
        inside = q.new_ones(1, 1, 1, context_rows, q.shape[4])
        outside = _windows(inside, kernel_size, pad)[:, :, 0] == 0
        logits = logits.masked_fill(outside, float("-inf"))
    return logits.softmax(dim=2)


def window_attention(
    q: Tensor,
    k: Tensor | None,
    v: Tensor,
    rel_rows: Tensor | None,
    rel_cols: Tensor | None,
    kernel_size: int,
    padding: str,
    pad_rows: tuple[int, int],
) -> Tensor:
    """Local attention for the query rows `q` given keys/values with the rows around them.

    q: (B, N, D, rows, W). k, v: (B, N, D, context_rows, W) where context_rows = rows + 2p -
    sum(pad_rows): the rows of the image that the queries' windows reach; `pad_rows` (top,
    bottom) says how many window rows fall outside the image on each side. k is None when the
    logits are q.r only. rel_rows, rel_cols: (N, k, D/2) or None (no relative logits).
    Returns (B, N, D, rows, W).
    """
    p = kernel_size // 2
    weights = window_weights(q, k, rel_rows, rel_cols, kernel_size, padding, pad_rows)
    return (weights.unsqueeze(2) * _windows(v, kernel_size, (p, p, *pad_rows))).sum(3)


def local_attention(
    *,
    q: Tensor,
    k: Tensor | None,
    v: Tensor,
    rel_rows: Tensor | None,
    rel_cols: Tensor | None,
    kernel_size: int,
    padding: str,
) -> Tensor:
    p = kernel_size // 2
    return window_attention(q, k, v, rel_rows, rel_cols, kernel_size, padding, (p, p))


def project(x: Tensor, weight: Tensor, heads: int) -> Tensor:
    """A dense 1x1 projection (weight: (C_out, C_in)) split into heads: (B, N, C_out/N, H, W).

    A matrix product, not a 1x1 convolution: on CUDA PyTorch lets cuDNN's float32 convolutions
    use TF32 (about 1e-4 relative) but keeps float32 matrix products exact, so the float32 layer
    paths built on this one (reference, chunked) stay float32 on a GPU too."""
    out = torch.matmul(weight, x.flatten(2)).unflatten(2, x.shape[2:])
    return out.unflatten(1, (heads, -1))


def project_qkv(
    x: Tensor, query_weight: Tensor, key_weight: Tensor | None, value_weight: Tensor, heads: int,
    key_bias: Tensor | None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The layer's q, k (None without key weights; plus key_bias, absolute positions) and v."""
    q = project(x, query_weight, heads)
    k = None
    if key_weight is not None:
        k = project(x, key_weight, heads)
        if key_bias is not None:
            k = k + key_bias.unflatten(1, (heads, -1))
    return q, k, project(x, value_weight, heads)


def local_self_attention(
    *,
    x: Tensor,
    query_weight: Tensor,
    key_weight: Tensor | None,
    value_weight: Tensor,
    rel_rows: Tensor | None,
    rel_cols: Tensor | None,
    kernel_size: int,
    heads: int,
    key_bias: Tensor | None,
    padding: str,
) -> Tensor:
    q, k, v = project_qkv(x, query_weight, key_weight, value_weight, heads, key_bias)
    return local_attention(q=q, k=k, v=v, rel_rows=rel_rows, rel_cols=rel_cols, kernel_size=kernel_size,
                           padding=padding).flatten(1, 2)
