"""The local self-attention operator (eq. 3 of the paper) and its dispatch to backends.

    y_ij = sum_{ab in N_k(i,j)} softmax_ab(q_ij . k_ab + q_ij . r_{a-i,b-j}) v_ab

computed per head, with no 1/sqrt(d) scaling; r is the concatenation of a row-offset and a
column-offset embedding, each half of a head's channels.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Callable

import torch
from torch import Tensor

from ..errors import ConfigError
from .backends import BACKENDS, PRIORITY, Call
from .backends.errors import BackendUnavailable, KernelFailed
from .backends.fused import autocast_dtype

PADDING_MODES = ("zeros", "mask")
BACKEND_NAMES = ("auto", *BACKENDS)

log = logging.getLogger(__name__)

# Overrides every layer's "auto", e.g. to compare backends without editing a config.
BACKEND_ENV = "SASA_ATTENTION_BACKEND"


def backend_override() -> str:
    """SASA_ATTENTION_BACKEND, or "auto" when it is unset. Read at every call (a dictionary
    look-up), so that one process can compare backends by setting it between calls; layers check
    it when they are built (check_options), so a misspelt name stops a run before it starts."""
    backend = os.environ.get(BACKEND_ENV) or "auto"
    if backend not in BACKEND_NAMES:
        raise ConfigError(f"{BACKEND_ENV}={backend!r} is not a local attention backend; expected one of {BACKEND_NAMES}")
    return backend


# Backends whose kernel failed to build or compile in this process, per device type, and why:
# "auto" passes over them from then on.
_FAILED: dict[tuple[str, str], str] = {}


def candidates(backend: str, call: Call) -> list[str]:
    """The backends to try for a call, in order. A name (or SASA_ATTENTION_BACKEND) is that
    backend alone, refused when it cannot run the call; "auto" is every capable backend of the
    device's priority list (PRIORITY: the fastest first, ending with one that always runs), the
    reasons for the others logged at debug level."""
    if backend == "auto":
        backend = backend_override()
    if backend != "auto":
        reason = BACKENDS[backend].can_run(call)
        if reason:
            raise BackendUnavailable(f"local attention backend {backend!r} cannot run here: {reason}")
        return [backend]
    capable = []
    for name in PRIORITY.get(call.device.type, PRIORITY["other"]):
        reason = _FAILED.get((name, call.device.type)) or BACKENDS[name].can_run(call)
        if reason:
            log.debug("local attention backend %r skipped: %s", name, reason)
        else:
            capable.append(name)
    return capable


def _dispatch(backend: str, call: Call, run: Callable) -> Tensor:
    """run(backend module) with the first of the candidates whose kernel works: one that fails to
    build or compile is reported once and the next is tried, so a run never dies for want of a
    fast path (a named backend's failure is the caller's to see)."""
    names = candidates(backend, call)
    for name in names:
        try:
            return run(BACKENDS[name])
        except KernelFailed as error:
            if len(names) == 1:
                raise
            _FAILED[(name, call.device.type)] = str(error)
            warnings.warn(f"{error}; local attention falls back to the next backend", stacklevel=3)
    raise AssertionError(f"no local attention backend ran on {call.device.type}; the last of PRIORITY always runs")


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _autocast_dtype(x: Tensor) -> torch.dtype:
    """The dtype a layer's float32 input is computed in under autocast (the backends' custom ops
    cast to it where their kernels take it); otherwise x's."""
    autocast = autocast_dtype(x.device.type)
    if x.dtype == torch.float32 and autocast is not None:
        return autocast
    return x.dtype


def check_options(kernel_size: int, padding: str, backend: str) -> None:
    """The operator's options: checked once where a layer is built (LocalSelfAttention2d), and by
    the functions below for their direct callers."""
    if padding not in PADDING_MODES:
        raise ConfigError(f"padding must be one of {PADDING_MODES}, got {padding!r}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be a positive odd number (the window is centred), got {kernel_size}")
    if backend not in BACKEND_NAMES:
        raise ConfigError(f"backend must be one of {BACKEND_NAMES} (local attention backends), got {backend!r}")
    if backend == "auto":
        backend_override()


def _check(
    heads: int, head_dim: int, has_keys: bool, rel_rows: Tensor | None, rel_cols: Tensor | None, kernel_size: int
) -> None:
    if (rel_rows is None) != (rel_cols is None):
        raise ValueError("rel_rows and rel_cols must both be given or both be None")
    if not has_keys and rel_rows is None:
        raise ValueError("with no keys the logits are q.r only, so rel_rows and rel_cols are required")
    if rel_rows is not None:
        expected = (heads, kernel_size, head_dim // 2)
        if head_dim % 2 or tuple(rel_rows.shape) != expected or tuple(rel_cols.shape) != expected:
            raise ValueError(
                f"relative embeddings must have shape (heads, kernel_size, head_dim/2) = {expected} "
                f"with an even head_dim; got rel_rows {tuple(rel_rows.shape)}, rel_cols {tuple(rel_cols.shape)}"
            )


def local_attention(
    q: Tensor,
    k: Tensor | None,
    v: Tensor,
    rel_rows: Tensor | None,
    rel_cols: Tensor | None,
    kernel_size: int,
    padding: str = "zeros",
    backend: str = "auto",
) -> Tensor:
    """Multi-head local attention over k x k neighbourhoods.

    q, k, v: (B, heads, head_dim, H, W). k may be None (logits q.r only). rel_rows, rel_cols:
    (heads, kernel_size, head_dim/2) embeddings of the row and column offsets -k//2..k//2, or
    None (no relative logits). padding: "zeros" (neighbours outside the image take part with key
    and value 0, as a convolution pads) or "mask" (they are left out of the softmax).
    Returns (B, heads, head_dim, H, W).
    """
    if q.dim() != 5 or v.shape != q.shape or (k is not None and k.shape != q.shape):
        shapes = [None if t is None else tuple(t.shape) for t in (q, k, v)]
        raise ValueError(f"q, k, v must all have shape (B, heads, head_dim, H, W); got {shapes}")
    check_options(kernel_size, padding, backend)
    _check(q.shape[1], q.shape[2], k is not None, rel_rows, rel_cols, kernel_size)
    call = Call(q.device, q.dtype, q.shape[2], kernel_size, _needs_grad(q, k, v, rel_rows, rel_cols))
    return _dispatch(backend, call, lambda impl: impl.local_attention(
        q=q, k=k, v=v, rel_rows=rel_rows, rel_cols=rel_cols, kernel_size=kernel_size, padding=padding))


def local_self_attention(
    x: Tensor,
    query_weight: Tensor,
    key_weight: Tensor | None,
    value_weight: Tensor,
    rel_rows: Tensor | None,
    rel_cols: Tensor | None,
    kernel_size: int,
    heads: int,
    key_bias: Tensor | None = None,
    padding: str = "zeros",
    backend: str = "auto",
    checked: bool = False,
) -> Tensor:
    """The whole layer: 1x1 projections of x (B, C_in, H, W) into q, k, v, then local attention.

    Weights are (C_out, C_in); key_bias (1, C_out, H, W) is added to the keys (absolute
    positions). Backends may fuse the projections into their tiles (the chunked one does, so
    the layer never stores q, k and v). Returns (B, C_out, H, W). checked: kernel_size,
    padding and backend have passed check_options (a layer checks them when it is built).
    """
    out_channels = query_weight.shape[0]
    if out_channels % heads:
        raise ConfigError(f"out_channels ({out_channels}) must be divisible by heads ({heads})")
    if not checked:
        check_options(kernel_size, padding, backend)
    _check(heads, out_channels // heads, key_weight is not None, rel_rows, rel_cols, kernel_size)
    needs_grad = _needs_grad(x, query_weight, key_weight, value_weight, rel_rows, rel_cols, key_bias)
    call = Call(x.device, _autocast_dtype(x), out_channels // heads, kernel_size, needs_grad)
    return _dispatch(backend, call, lambda impl: impl.local_self_attention(
        x=x, query_weight=query_weight, key_weight=key_weight, value_weight=value_weight, rel_rows=rel_rows,
        rel_cols=rel_cols, kernel_size=kernel_size, heads=heads, key_bias=key_bias, padding=padding))
