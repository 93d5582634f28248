"""Local attention as window reductions compiled by torch.compile (inductor: C++ on CPU, Triton on GPUs).

Keys and values are never copied k^2 times: a window is a strided view of the zero-padded tensor
(`_windows`), and `(q * windows(k)).sum(channels)` is one reduction that inductor generates as a
loop reading k in place. What exists in memory is the logits, k^2 values per pixel and head (the
attention weights every formulation has), a head_dim-th of what the unfold style holds.

Backward is written out, not derived: it recomputes the probabilities from the forward's
log-sum-exp (fused.py keeps only that and the inputs), and the gradients of keys and values,
which are scatters over windows, become gathers too: the key at (u, v) receives from the queries
at (u + p - a, v + p - c), which are the windows of the zero-padded queries once the weights'
offsets are flipped (`_transposed_window_sum`).

The first call compiles one graph for every shape and option (about a minute on a 2-core CPU;
a dimension of size 1, or an image smaller than the window, compiles a second one). Inductor
caches them on disk, in $TORCHINDUCTOR_CACHE_DIR or the system's temporary folder, so later
processes load them in seconds.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ...compat import compiler_settings
from . import custom_ops, fused
from .call import Call


def _windows(padded: Tensor, kernel_size: int) -> Tensor:
    """(B, N, C, H+K-1, W+K-1) -> the view (B, N, C, K, K, H, W) with [..., a, c, i, j] = padded[..., i+a, j+c].

    padded is always a fresh output of F.pad, so its storage offset is 0 (asking for it would
    break dynamo's graph)."""
    batch, heads, channels, padded_height, padded_width = padded.shape
    s = padded.stride()
    size = (batch, heads, channels, kernel_size, kernel_size, padded_height - kernel_size + 1, padded_width - kernel_size + 1)
    return torch.as_strided(padded, size, (s[0], s[1], s[2], s[3], s[4], s[3], s[4]), 0)


def _pad(t: Tensor, kernel_size: int) -> Tensor:
    return F.pad(t, (kernel_size // 2,) * 4)


def _logits(q, k, rel_rows, rel_cols, kernel_size: int, mask: Tensor) -> Tensor:
    """(B, N, K, K, H, W): q.k + q.r for every pixel and window offset (row offset, column offset);
    -inf outside the image where mask (a boolean scalar) is set."""
    height, width = q.shape[-2:]
    half = q.shape[2] // 2
    rows = torch.einsum("bndhw,nad->bnahw", q[:, :, :half], rel_rows)
    cols = torch.einsum("bndhw,ncd->bnchw", q[:, :, half:], rel_cols)
    logits = (q[:, :, :, None, None] * _windows(_pad(k, kernel_size), kernel_size)).sum(2)
    logits = logits + rows[:, :, :, None] + cols[:, :, None]
    offsets = torch.arange(kernel_size, device=q.device) - kernel_size // 2
    row_positions = offsets[:, None] + torch.arange(height, device=q.device)
    col_positions = offsets[:, None] + torch.arange(width, device=q.device)
    rows_inside = (row_positions >= 0) & (row_positions < height)
    cols_inside = (col_positions >= 0) & (col_positions < width)
    outside = ~(rows_inside[:, None, :, None] & cols_inside[None, :, None, :])
    return logits.masked_fill(outside & mask, float("-inf"))


def _window_sum(weights: Tensor, t: Tensor, kernel_size: int) -> Tensor:
    """sum over offsets (a, c) of weights[..., a, c, i, j] * t[..., i+a-p, j+c-p], t zero outside:
    (B, N, K, K, H, W) x (B, N, D, H, W) -> (B, N, D, H, W)."""
    return (weights[:, :, None] * _windows(_pad(t, kernel_size), kernel_size)).sum((3, 4))


def _transposed_window_sum(weights: Tensor, t: Tensor, kernel_size: int) -> Tensor:
    """The adjoint of _window_sum in t: at (u, v), the sum over offsets (a, c) of
    weights[..., a, c, u+p-a, v+p-c] * t[..., u+p-a, v+p-c] (the pixels whose windows hold (u, v))."""
    flipped = _pad(weights.flip(2, 3), kernel_size)  # (B, N, K, K, H+K-1, W+K-1)
    batch, heads, _, _, padded_height, padded_width = flipped.shape
    s = flipped.stride()
    # [..., a', c', u, v] = flipped[..., a', c', u+a', v+c']: a diagonal view, no copy.
    size = (batch, heads, kernel_size, kernel_size, padded_height - kernel_size + 1, padded_width - kernel_size + 1)
    diagonal = torch.as_strided(flipped, size, (s[0], s[1], s[2] + s[4], s[3] + s[5], s[4], s[5]), 0)
    return (diagonal[:, :, None] * _windows(_pad(t, kernel_size), kernel_size)).sum((3, 4))


def _forward(q, k, v, rel_rows, rel_cols, kernel_size: int, mask: Tensor):
    logits = _logits(q, k, rel_rows, rel_cols, kernel_size, mask)
    lse = torch.logsumexp(logits, dim=(2, 3))
    probs = torch.exp(logits - lse[:, :, None, None])
    return _window_sum(probs, v, kernel_size), lse


def _backward(grad_out, q, k, v, rel_rows, rel_cols, lse, kernel_size: int, mask: Tensor):
    probs = torch.exp(_logits(q, k, rel_rows, rel_cols, kernel_size, mask) - lse[:, :, None, None])
    grad_probs = (grad_out[:, :, :, None, None] * _windows(_pad(v, kernel_size), kernel_size)).sum(2)
    grad_logits = probs * (grad_probs - (probs * grad_probs).sum((2, 3), keepdim=True))
    half = q.shape[2] // 2
    by_row, by_col = grad_logits.sum(3), grad_logits.sum(2)  # (B, N, K, H, W) each
    grad_q = _window_sum(grad_logits, k, kernel_size) + torch.cat(
        [torch.einsum("bnahw,nad->bndhw", by_row, rel_rows), torch.einsum("bnchw,ncd->bndhw", by_col, rel_cols)], 2)
    return (
        grad_q,
        _transposed_window_sum(grad_logits, q, kernel_size),
        _transposed_window_sum(probs, grad_out, kernel_size),
        torch.einsum("bnahw,bndhw->nad", by_row, q[:, :, :half]),
        torch.einsum("bnchw,bndhw->ncd", by_col, q[:, :, half:]),
    )


# Dynamo's settings for the package's compiled calls only. Shapes are symbolic from the first
# call (a model's layers differ in every dimension), without duck sizing, which would guard on
# dimensions that happen to be equal (batch == heads) and recompile when they differ. Hitting
# the recompile limit raises rather than falling back to running the formulation eagerly, which
# would expand keys and values k^2 times.
_DYNAMO_CONFIG = {"recompile_limit": 16, "fail_on_recompile_limit_hit": True}
_SHAPE_CONFIG = {"use_duck_shape": False}


@functools.cache
def _compiled() -> tuple:
    return torch.compile(_forward, dynamic=True), torch.compile(_backward, dynamic=True)


def run_compiled(fn, *args, **kwargs):
    """fn (a torch.compile'd function of this package) called under the settings above."""
    with compiler_settings(_DYNAMO_CONFIG, _SHAPE_CONFIG):
        return fn(*args, **kwargs)


def _complete(q: Tensor, k: Tensor, rel_rows: Tensor, rel_cols: Tensor, kernel_size: int, has_keys: bool,
              has_rel: bool, mask: bool) -> tuple:
    """One compiled graph serves every option: absent keys are zeros (q.k = 0), absent
    embeddings are zeros (q.r = 0), and the mask is a tensor, not a constant of the graph. The
    ablations without keys or relative logits pay for the zeros; every run compiles once."""
    if not has_keys:
        k = torch.zeros_like(q)
    if not has_rel:
        # The query's halves meet rows and columns: an odd head dim splits as D // 2 and the rest.
        half = q.shape[2] // 2
        rel_rows, rel_cols = (q.new_zeros(q.shape[1], kernel_size, width) for width in (half, q.shape[2] - half))
    return k, rel_rows, rel_cols, torch.tensor(mask, device=q.device)


def _kernel_forward(q, k, v, rel_rows, rel_cols, kernel_size: int, has_keys: bool, has_rel: bool, mask: bool):
    k, rel_rows, rel_cols, mask = _complete(q, k, rel_rows, rel_cols, kernel_size, has_keys, has_rel, mask)
    return run_compiled(_compiled()[0], q, k, v, rel_rows, rel_cols, kernel_size, mask)


def _kernel_backward(grad_out, q, k, v, rel_rows, rel_cols, lse, kernel_size: int, has_keys: bool, has_rel: bool,
                     mask: bool):
    k, rel_rows, rel_cols, mask = _complete(q, k, rel_rows, rel_cols, kernel_size, has_keys, has_rel, mask)
    grad_q, grad_k, grad_v, grad_rows, grad_cols = run_compiled(
        _compiled()[1], grad_out, q, k, v, rel_rows, rel_cols, lse, kernel_size, mask)
    return grad_q, grad_k if has_keys else None, grad_v, *((grad_rows, grad_cols) if has_rel else (None, None))


# The fused kernels' interface (fused.py).
KERNEL = fused.Kernel(forward=_kernel_forward, backward=_kernel_backward)


def can_run(call: Call) -> str | None:
    return None  # inductor generates C++ on CPU and Triton on GPUs, forward and backward


custom_ops.register_kernel("compiled", lambda: KERNEL)

def local_attention(*, q, k, v, rel_rows, rel_cols, kernel_size: int, padding: str) -> Tensor:
    return custom_ops.local_attention("compiled", q=q, k=k, v=v, rel_rows=rel_rows, rel_cols=rel_cols,
                                      kernel_size=kernel_size, padding=padding)


def local_self_attention(
    *, x, query_weight, key_weight, value_weight, rel_rows, rel_cols, kernel_size: int, heads: int, key_bias, padding: str
) -> Tensor:
    return custom_ops.local_self_attention(
        "compiled", x=x, query_weight=query_weight, key_weight=key_weight, value_weight=value_weight, rel_rows=rel_rows,
        rel_cols=rel_cols, kernel_size=kernel_size, heads=heads, key_bias=key_bias, padding=padding)
