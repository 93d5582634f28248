"""What the fused local-attention kernels compute around them, shared by the backends that have
one (cpu, compiled, triton); custom_ops.py makes these torch ops with their autograd.

A kernel (`Kernel`) has two functions, the C++ extension's signature (the dtypes each kernel
takes are registered with it in custom_ops.py):

- forward(q, k, v, rel_rows, rel_cols, kernel_size, has_keys, has_rel, mask) -> (out, lse)
- backward(grad_out, q, k, v, rel_rows, rel_cols, lse, kernel_size, has_keys, has_rel, mask)
  -> (grad_q, grad_k, grad_v, grad_rel_rows, grad_rel_cols)

q, k, v, out are (B, N, D, H, W) and contiguous; lse is the log-sum-exp of each pixel's logits
(B, N, H, W); an absent k or relative embedding is passed as an empty tensor, and its gradient
comes back as None. Forward keeps the inputs and lse, never the output, and backward recomputes
the probabilities from lse (as flash attention does): a following in-place op cannot corrupt
what backward needs.

The layer (layer_forward, layer_backward) keeps only its input x (and lse), runs the 1x1
projections and the kernel a chunk at a time (a few images, or a group of heads of one large
image), and recomputes the projections in backward, so a layer stores what a convolution stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor


@dataclass(frozen=True)
class Kernel:
    forward: Callable
    backward: Callable
    # A backend's own whole layer (the triton backend's, built for GPUs), with layer_forward's and
    # layer_backward's signatures but no kernel argument; None: this module's chunked layer.
    layer_forward: Callable | None = None
    layer_backward: Callable | None = None


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """Autocast's dtype where it is on for this device type, else None. Devices without autocast
    (meta, on which the complexity counter runs the models) ask torch nothing: it raises for them."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def compute_dtype(t: Tensor) -> torch.dtype:
    """What the layer's projections compute in: float32, or float64 for float64 inputs (the tests' precision)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _contiguous(t: Tensor | None, like: Tensor) -> Tensor:
    """t as the kernels take it: contiguous; an empty tensor (the kernels' "none") for None."""
    return like.new_empty(0) if t is None else t.contiguous()


# A chunk of the layer's loop: its q, k and v (and their gradients) hold at most this many
# elements, and at most a quarter of the batch's images; an image larger than that is cut into
# groups of heads. So the layer's extra memory stays a fraction of one activation at any batch
# size and resolution.
CHUNK_ELEMENTS = 2**21


@dataclass(frozen=True)
class Chunk:
    """Images [images.start, images.stop) x heads [heads.start, heads.stop): one step of the loop."""

    images: slice
    heads: slice
    channels: slice  # the heads' channels of the layer's output


def plan_chunks(batch: int, heads: int, head_dim: int, pixels: int) -> list[Chunk]:
    per_head = 3 * head_dim * pixels
    if heads * per_head > CHUNK_ELEMENTS:
        group = max(1, CHUNK_ELEMENTS // per_head)
        return [Chunk(slice(i, i + 1), slice(h, min(heads, h + group)), slice(h * head_dim, min(heads, h + group) * head_dim))
                for i in range(batch) for h in range(0, heads, group)]
    images = max(1, min(CHUNK_ELEMENTS // (heads * per_head), -(-batch // 4)))
    return [Chunk(slice(i, i + images), slice(0, heads), slice(0, heads * head_dim)) for i in range(0, batch, images)]


def attention_forward(kernel: Kernel, q, k, v, rel_rows, rel_cols, kernel_size: int, mask: bool):
    """(out, lse) for q, k, v (B, N, D, H, W) in a dtype the kernel takes; k and the embeddings may be None."""
    inputs = [_contiguous(t, q) for t in (q, k, v, rel_rows, rel_cols)]
    return kernel.forward(*inputs, kernel_size, k is not None, rel_rows is not None, mask)


def attention_backward(kernel: Kernel, grad_out, q, k, v, rel_rows, rel_cols, lse, kernel_size: int, mask: bool):
    """[grad_q, grad_k, grad_v, grad_rel_rows, grad_rel_cols], None for an absent input."""
    inputs = [_contiguous(t, q) for t in (q, k, v, rel_rows, rel_cols)]
    grads = kernel.backward(_contiguous(grad_out, q), *inputs, lse, kernel_size, k is not None, rel_rows is not None,
                            mask)
    # None for what is absent (the cpu kernel returns zero embedding gradients then), contiguous
    # as the op's fake implementation says (the triton kernel's are slices of its partial sums).
    return [g.contiguous() if t is not None else None for g, t in zip(grads, (q, k, v, rel_rows, rel_cols))]


def layer_forward(kernel: Kernel, x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols,
                  kernel_size: int, heads: int, mask: bool):
    """(out (B, C_out, H, W), lse (B, heads, H, W)): the projections and the kernel, a chunk at a
    time. Every tensor is in x's dtype, float32 or float64 (compute_dtype); key_weight, key_bias
    and the embeddings may be None."""
    x = x.contiguous()
    weights = [w for w in (query_weight, key_weight, value_weight) if w is not None]
    rel = [_contiguous(t, x) for t in (rel_rows, rel_cols)]
    flags = (key_weight is not None, rel_rows is not None, mask)
    out = x.new_empty((x.shape[0], query_weight.shape[0], *x.shape[2:]))
    lse = x.new_empty((x.shape[0], heads, *x.shape[2:]))
    for chunk in plan_chunks(x.shape[0], heads, query_weight.shape[0] // heads, x.shape[2] * x.shape[3]):
        with torch.autocast(x.device.type, enabled=False):  # the kernel computes in x's dtype
            q, k, v = _project(x[chunk.images], weights, key_bias, chunk)
        out_chunk, lse[chunk.images, chunk.heads] = kernel.forward(q, k, v, *_heads_of(rel, chunk), kernel_size, *flags)
        out[chunk.images, chunk.channels] = out_chunk.flatten(1, 2)
    return out, lse


def layer_backward(kernel: Kernel, grad_out, x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols,
                   lse, kernel_size: int, heads: int, mask: bool, needs_grad_x: bool):
    """[grad_x, grad_query_weight, grad_key_weight, grad_value_weight, grad_key_bias, grad_rel_rows,
    grad_rel_cols], None for an absent input (and for x unless needs_grad_x): the projections
    recomputed chunk by chunk, their gradients taken by hand."""
    x, grad_out = x.contiguous(), grad_out.contiguous()
    has_keys, has_rel = key_weight is not None, rel_rows is not None
    weights = [w for w in (query_weight, key_weight, value_weight) if w is not None]
    rel = [_contiguous(t, x) for t in (rel_rows, rel_cols)]
    grad_x = torch.zeros_like(x) if needs_grad_x else None
    grad_weights = [torch.zeros_like(w) for w in weights]
    grad_bias = None if key_bias is None else torch.zeros_like(key_bias)
    grad_rel = [torch.zeros_like(rel_rows), torch.zeros_like(rel_cols)] if has_rel else [None, None]
    for chunk in plan_chunks(x.shape[0], heads, query_weight.shape[0] // heads, x.shape[2] * x.shape[3]):
        x_chunk = x[chunk.images]
        with torch.autocast(x.device.type, enabled=False):
            q, k, v = _project(x_chunk, weights, key_bias, chunk)
        grad_q, grad_k, grad_v, grad_rows, grad_cols = kernel.backward(
            grad_out[chunk.images, chunk.channels].unflatten(1, (q.shape[1], -1)), q, k, v,
            *_heads_of(rel, chunk), lse[chunk.images, chunk.heads].contiguous(), kernel_size, has_keys, has_rel, mask)
        # The 1x1 projections, one weight at a time (no concatenated copies): d x = sum of
        # W^T d(qkv), d W = the sum over pixels of d(qkv) x^T.
        x_chunk = x_chunk.flatten(2)
        grads = [g.flatten(1, 2).flatten(2) for g in (grad_q, grad_k, grad_v) if g is not None]
        if grad_x is not None:
            grad_x_chunk = grad_x[chunk.images].flatten(2)
            for weight, grad in zip(weights, grads):
                grad_x_chunk.baddbmm_(weight[chunk.channels].t().expand(len(grad), -1, -1), grad)
        for grad_weight, grad in zip(grad_weights, grads):
            # Per image, then summed: einsum would first copy both into (channels, pixels).
            grad_weight[chunk.channels] += torch.bmm(grad, x_chunk.transpose(1, 2)).sum(0)
        if grad_bias is not None:
            grad_bias[:, chunk.channels] += grad_k.flatten(1, 2).sum(0, keepdim=True)
        if has_rel:
            grad_rel[0][chunk.heads] += grad_rows
            grad_rel[1][chunk.heads] += grad_cols
    if not has_keys:
        grad_weights.insert(1, None)
    return [grad_x, *grad_weights, grad_bias, *grad_rel]


def _heads_of(rel: list[Tensor] | tuple[Tensor, ...], chunk: Chunk) -> list[Tensor]:
    """The chunk's heads of the relative embeddings (empty tensors, the kernels' "none", stay)."""
    return [t[chunk.heads] if t.numel() else t for t in rel]


def _project(x: Tensor, weights: list[Tensor], key_bias: Tensor | None, chunk: Chunk):
    """The chunk's q, k, v (B, N, D, H, W) from the 1x1 projections by weights (query, [key,]
    value), each its own matrix product, so that each comes out contiguous; k is empty (the
    kernels' "no keys") without key weights."""
    # Matrix products: measured twice as fast as the same 1x1 convolutions through mkldnn on CPU.
    flat = x.flatten(2)
    heads = chunk.heads.stop - chunk.heads.start
    parts = [torch.matmul(w[chunk.channels], flat).view(x.shape[0], heads, -1, *x.shape[2:]) for w in weights]
    if len(parts) == 2:
        parts.insert(1, x.new_empty(0))
    elif key_bias is not None:
        parts[1] = parts[1] + key_bias[:, chunk.channels].view(1, heads, -1, *x.shape[2:])
    return parts
