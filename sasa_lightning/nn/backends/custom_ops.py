"""The fused kernels as torch.library custom ops, so that torch.compile and torch.export see one
opaque op per layer (with its shapes from a fake implementation and its gradient from a
registered backward) instead of tracing into a C++ extension or a Triton launcher:

- sasa::local_self_attention_fwd / _bwd: the whole layer (projections and attention, chunked,
  fused.layer_forward / layer_backward);
- sasa::local_attention_fwd / _bwd: the operator alone on q, k and v.

`kernel` names the backend whose kernel runs (register_kernel), so one op serves the cpu,
compiled and triton backends. The ops take and return tensors in the kernel's dtype; the
functions at the bottom, which the backends call, cast around them, so autograd casts the
gradients back and autocast's output dtype is decided outside the op.

No `from __future__ import annotations` here: torch.library reads the ops' schemas from these
signatures' annotations.
"""

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from . import fused


@dataclass(frozen=True)
class KernelEntry:
    load: Callable[[], fused.Kernel]  # builds or compiles on first use
    dtypes: tuple[torch.dtype, ...]  # known without loading, for the casts around the ops
    channels_last: bool  # the layer's output and grad_x are channels-last (else contiguous)


_KERNELS: dict[str, KernelEntry] = {}


def register_kernel(name: str, load: Callable[[], fused.Kernel], dtypes=(torch.float32, torch.float64),
                    channels_last: bool = False) -> None:
    _KERNELS[name] = KernelEntry(load, tuple(dtypes), channels_last)


def _layer_format(kernel: str) -> torch.memory_format:
    return torch.channels_last if _KERNELS[kernel].channels_last else torch.contiguous_format


def _accumulator(t: Tensor) -> torch.dtype:
    """The log-sum-exp's dtype: every kernel keeps it in float32, or float64 for float64 inputs."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _empty_for_none(grads, like: Tensor) -> tuple[Tensor, ...]:
    """An op's outputs cannot be None: an absent gradient is an empty tensor (each its own, as an
    op's outputs may not alias one another)."""
    return tuple(like.new_empty(0) if g is None else g for g in grads)


def _none_for_absent(grads, present) -> list[Optional[Tensor]]:
    return [g if here else None for g, here in zip(grads, present)]


def _detached(*tensors: Optional[Tensor]) -> list[Optional[Tensor]]:
    """An op's inputs as its implementation should see them: an op called under autograd gets
    tensors that still say requires_grad, which the compiled backend's torch.compile would guard
    on (one more compile) and trace for gradients it never takes."""
    return [None if t is None else t.detach() for t in tensors]


@torch.library.custom_op("sasa::local_attention_fwd", mutates_args=())
def local_attention_fwd(
    q: Tensor, k: Optional[Tensor], v: Tensor, rel_rows: Optional[Tensor], rel_cols: Optional[Tensor],
    kernel_size: int, mask: bool, kernel: str,
) -> tuple[Tensor, Tensor]:
    return tuple(fused.attention_forward(_KERNELS[kernel].load(), *_detached(q, k, v, rel_rows, rel_cols), kernel_size,
                                         mask))


@local_attention_fwd.register_fake
def _(q, k, v, rel_rows, rel_cols, kernel_size, mask, kernel):
    batch, heads, _, height, width = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
        (batch, heads, height, width), dtype=_accumulator(q))


@torch.library.custom_op("sasa::local_attention_bwd", mutates_args=())
def local_attention_bwd(
    grad_out: Tensor, q: Tensor, k: Optional[Tensor], v: Tensor, rel_rows: Optional[Tensor],
    rel_cols: Optional[Tensor], lse: Tensor, kernel_size: int, mask: bool, kernel: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = fused.attention_backward(_KERNELS[kernel].load(), *_detached(grad_out, q, k, v, rel_rows, rel_cols, lse),
                                     kernel_size, mask)
    return _empty_for_none(grads, q)


@local_attention_bwd.register_fake
def _(grad_out, q, k, v, rel_rows, rel_cols, lse, kernel_size, mask, kernel):
    return tuple(q.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
                 for t in (q, k, v, rel_rows, rel_cols))


def _attention_setup(ctx, inputs, output) -> None:
    q, k, v, rel_rows, rel_cols, kernel_size, mask, kernel = inputs
    ctx.save_for_backward(q, k, v, rel_rows, rel_cols, output[1])
    ctx.kernel_size, ctx.mask, ctx.kernel = kernel_size, mask, kernel
    ctx.mark_non_differentiable(output[1])


def _attention_backward(ctx, grad_out, _grad_lse):
    q, k, v, rel_rows, rel_cols, lse = ctx.saved_tensors
    grads = local_attention_bwd(grad_out, q, k, v, rel_rows, rel_cols, lse, ctx.kernel_size, ctx.mask, ctx.kernel)
    return (*_none_for_absent(grads, [t is not None for t in (q, k, v, rel_rows, rel_cols)]), None, None, None)


local_attention_fwd.register_autograd(_attention_backward, setup_context=_attention_setup)


@torch.library.custom_op("sasa::local_self_attention_fwd", mutates_args=())
def local_self_attention_fwd(
    x: Tensor, query_weight: Tensor, key_weight: Optional[Tensor], value_weight: Tensor,
    key_bias: Optional[Tensor], rel_rows: Optional[Tensor], rel_cols: Optional[Tensor],
    kernel_size: int, heads: int, mask: bool, kernel: str,
) -> tuple[Tensor, Tensor]:
    tensors = _detached(x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols)
    implementation = _KERNELS[kernel].load()
    if implementation.layer_forward is not None:
        return tuple(implementation.layer_forward(*tensors, kernel_size, heads, mask))
    return tuple(fused.layer_forward(implementation, *tensors, kernel_size, heads, mask))


@local_self_attention_fwd.register_fake
def _(x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols, kernel_size, heads, mask, kernel):
    batch, _, height, width = x.shape
    return (torch.empty((batch, query_weight.shape[0], height, width), dtype=x.dtype, device=x.device,
                        memory_format=_layer_format(kernel)),
            x.new_empty((batch, heads, height, width), dtype=_accumulator(x)))


@torch.library.custom_op("sasa::local_self_attention_bwd", mutates_args=())
def local_self_attention_bwd(
    grad_out: Tensor, x: Tensor, query_weight: Tensor, key_weight: Optional[Tensor], value_weight: Tensor,
    key_bias: Optional[Tensor], rel_rows: Optional[Tensor], rel_cols: Optional[Tensor], lse: Tensor,
    kernel_size: int, heads: int, mask: bool, kernel: str, needs_grad_x: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    tensors = _detached(grad_out, x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols, lse)
    implementation = _KERNELS[kernel].load()
    if implementation.layer_backward is not None:
        grads = implementation.layer_backward(*tensors, kernel_size, heads, mask, needs_grad_x)
    else:
        grads = fused.layer_backward(implementation, *tensors, kernel_size, heads, mask, needs_grad_x)
    return _empty_for_none(grads, x)


@local_self_attention_bwd.register_fake
def _(grad_out, x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols, lse, kernel_size, heads,
      mask, kernel, needs_grad_x):
    grad_x = x.new_empty(0) if not needs_grad_x else torch.empty_like(x, memory_format=_layer_format(kernel))
    return (grad_x, *(x.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
                      for t in (query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols)))


_LAYER_INPUTS = ("x", "query_weight", "key_weight", "value_weight", "key_bias", "rel_rows", "rel_cols")


def _layer_setup(ctx, inputs, output) -> None:
    *tensors, kernel_size, heads, mask, kernel = inputs
    ctx.save_for_backward(*tensors, output[1])
    ctx.kernel_size, ctx.heads, ctx.mask, ctx.kernel = kernel_size, heads, mask, kernel
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zeros for lse's gradient, which backward never reads


def _layer_backward(ctx, grad_out, _grad_lse):
    *tensors, lse = ctx.saved_tensors
    if grad_out is None:  # the output took no part in what was differentiated
        return (None,) * 11
    needs_grad_x = ctx.needs_input_grad[0]
    grads = local_self_attention_bwd(grad_out, *tensors, lse, ctx.kernel_size, ctx.heads, ctx.mask, ctx.kernel,
                                     needs_grad_x)
    present = [needs_grad_x, *(t is not None for t in tensors[1:])]
    return (*_none_for_absent(grads, present), None, None, None, None)


local_self_attention_fwd.register_autograd(_layer_backward, setup_context=_layer_setup)


def local_attention(kernel: str, *, q, k, v, rel_rows, rel_cols, kernel_size: int, padding: str) -> Tensor:
    """The backends' local_attention through the ops: inputs cast to a dtype the kernel takes
    (their own, else float32), the output back to q's."""
    dtypes = _KERNELS[kernel].dtypes
    dtype = q.dtype if q.dtype in dtypes else torch.float32
    inputs = [None if t is None else t.to(dtype) for t in (q, k, v, rel_rows, rel_cols)]
    out, _ = local_attention_fwd(*inputs, kernel_size, padding == "mask", kernel)
    return out.to(q.dtype)


def local_self_attention(
    kernel: str, *, x, query_weight, key_weight, value_weight, rel_rows, rel_cols, kernel_size, heads, key_bias,
    padding,
) -> Tensor:
    """The backends' local_self_attention through the ops (_layer_dtypes: what it computes and
    answers in)."""
    compute, answer = _layer_dtypes(kernel, x)
    tensors = [None if t is None else t.to(compute)
               for t in (x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols)]
    out, _ = local_self_attention_fwd(*tensors, kernel_size, heads, padding == "mask", kernel)
    return out.to(answer)


def _layer_dtypes(kernel: str, x: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(the dtype the layer computes in, the dtype it answers in). Under autocast it answers in
    autocast's dtype, as the convolutions it replaces do, otherwise in x's; it computes in that
    dtype where the kernel takes it (the triton kernels take bf16 and fp16, on tensor cores),
    else in float32 (float64 for float64 inputs)."""
    answer = x.dtype
    autocast = fused.autocast_dtype(x.device.type)
    if autocast is not None and x.dtype != torch.float64:
        answer = autocast
    if answer in _KERNELS[kernel].dtypes:
        return answer, answer
    return fused.compute_dtype(x), answer
