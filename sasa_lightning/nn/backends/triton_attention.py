"""Local attention with fused Triton kernels on tensor cores: the CUDA backend.

The layer (local_self_attention) is triton_layer.py's: projections as matrix products in the
dtype the layer computes in (bf16 under bf16 autocast), channels-last q, k, v, the kernels
(triton_kernels.py, launched by triton_launch.py), channels-last output. The operator alone
(local_attention) takes q, k, v (B, N, D, H, W) in float16, bfloat16, float32 or float64 as they
come, lays each head out channels-last for the kernels and its results back; the sums are in
float32 (float64 for float64), the log-sum-exp and the embeddings' gradients too. The autograd
around both is custom_ops.py's.

Without a GPU the same kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before
Triton is imported), on CPU tensors: that is how the tests check them against the reference.
"""

from __future__ import annotations


import torch
from torch import Tensor

from . import custom_ops, fused, triton_launch
from .call import Call
from .errors import BackendUnavailable
from .triton_launch import DTYPES, MAX_HEAD_DIM, MAX_KERNEL_SIZE, interpreting


def can_run(call: Call) -> str | None:
    if call.device.type != "cuda" and not (call.device.type == "cpu" and interpreting()):
        return f"the triton backend runs on CUDA tensors, not {call.device.type} (on CPU only under TRITON_INTERPRET=1)"
    if call.dtype not in DTYPES:
        return f"the triton backend takes {', '.join(str(d) for d in DTYPES)}, not {call.dtype}"
    if call.head_dim > MAX_HEAD_DIM:
        return f"the triton backend takes head dims up to {MAX_HEAD_DIM}, not {call.head_dim}"
    if call.kernel_size > MAX_KERNEL_SIZE[call.dtype]:
        return (f"the triton backend takes windows up to {MAX_KERNEL_SIZE[call.dtype]} in {call.dtype}, "
                f"not {call.kernel_size}")
    return None


def _check(t: Tensor, head_dim: int, kernel_size: int) -> None:
    """The kernels' own guard, for calls that did not come through can_run."""
    reason = can_run(Call(t.device, t.dtype, head_dim, kernel_size, needs_grad=False))
    if reason:
        raise BackendUnavailable(reason)


def _per_head(t: Tensor) -> Tensor:
    """(B, N, D, H, W) -> (B, N, H, W, D) contiguous, each head's channels together per pixel."""
    return t.permute(0, 1, 3, 4, 2).contiguous()


def _back(t: Tensor) -> Tensor:
    return t.permute(0, 1, 4, 2, 3).contiguous()


def forward(q, k, v, rel_rows, rel_cols, kernel_size: int, has_keys: bool, has_rel: bool, mask: bool):
    """(out, lse), fused.py's kernel interface; absent k or embeddings are empty tensors."""
    _check(q, q.shape[2], kernel_size)
    q_heads = _per_head(q)
    out = torch.empty_like(q_heads)
    lse = q.new_empty((q.shape[0], q.shape[1], *q.shape[3:]), dtype=triton_launch.accumulator(q.dtype))
    triton_launch.forward(q_heads, _per_head(k) if has_keys else None, _per_head(v), rel_rows if has_rel else None,
                          rel_cols if has_rel else None, out, lse, kernel_size, mask)
    return _back(out), lse


def backward(grad_out, q, k, v, rel_rows, rel_cols, lse, kernel_size: int, has_keys: bool, has_rel: bool, mask: bool):
    """(grad_q, grad_k, grad_v, grad_rel_rows, grad_rel_cols); grad_k None without keys, the
    embeddings' None without them."""
    _check(q, q.shape[2], kernel_size)
    q_heads = _per_head(q)
    grad_q, grad_v = torch.empty_like(q_heads), torch.empty_like(q_heads)
    grad_k = torch.empty_like(q_heads) if has_keys else None
    rel = triton_launch.backward(_per_head(grad_out), q_heads, _per_head(k) if has_keys else None, _per_head(v),
                                 rel_rows if has_rel else None, rel_cols if has_rel else None, lse, grad_q, grad_k,
                                 grad_v, kernel_size, mask)
    rows, cols = (None, None) if rel is None else (g.to(rel_rows.dtype) for g in rel)
    return _back(grad_q), None if grad_k is None else _back(grad_k), _back(grad_v), rows, cols


def layer_forward(x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols, kernel_size: int,
                  heads: int, mask: bool):
    from . import triton_layer

    _check(x, query_weight.shape[0] // heads, kernel_size)
    with torch.autocast(x.device.type, enabled=False):  # every input is already in the dtype it computes in
        return triton_layer.layer_forward(x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols,
                                          kernel_size, heads, mask)


def layer_backward(grad_out, x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols, lse,
                   kernel_size: int, heads: int, mask: bool, needs_grad_x: bool):
    from . import triton_layer

    with torch.autocast(x.device.type, enabled=False):
        return triton_layer.layer_backward(grad_out.to(x.dtype), x, query_weight, key_weight, value_weight, key_bias,
                                           rel_rows, rel_cols, lse, kernel_size, heads, mask, needs_grad_x)


KERNEL = fused.Kernel(forward=forward, backward=backward, layer_forward=layer_forward, layer_backward=layer_backward)
custom_ops.register_kernel("triton", lambda: KERNEL, DTYPES, channels_last=True)

def local_attention(*, q, k, v, rel_rows, rel_cols, kernel_size: int, padding: str) -> Tensor:
    return custom_ops.local_attention("triton", q=q, k=k, v=v, rel_rows=rel_rows, rel_cols=rel_cols,
                                      kernel_size=kernel_size, padding=padding)


def local_self_attention(
    *, x, query_weight, key_weight, value_weight, rel_rows, rel_cols, kernel_size: int, heads: int, key_bias, padding: str
) -> Tensor:
    return custom_ops.local_self_attention(
        "triton", x=x, query_weight=query_weight, key_weight=key_weight, value_weight=value_weight, rel_rows=rel_rows,
        rel_cols=rel_cols, kernel_size=kernel_size, heads=heads, key_bias=key_bias, padding=padding)
