"""Autograd for fused local-attention kernels, shared by the backends that have one (cpu, compiled).

A kernel (`Kernel`) has two functions, the C++ extension's signature, and the dtypes it takes as
they come (others are computed in float32):

- forward(q, k, v, rel_rows, rel_cols, kernel_size, has_keys, has_rel, mask) -> (out, lse)
- backward(grad_out, q, k, v, rel_rows, rel_cols, lse, kernel_size, has_keys, has_rel, mask)
  -> (grad_q, grad_k, grad_v, grad_rel_rows, grad_rel_cols)

q, k, v, out are (B, N, D, H, W) and contiguous; lse is the log-sum-exp of each pixel's logits
(B, N, H, W); an absent k or relative embedding is passed as an empty tensor, and grad_k comes
back as None (the embeddings' gradients are ignored). Forward keeps the inputs and lse, never
the output, and backward recomputes the probabilities from lse (as flash attention does): a
following in-place op cannot corrupt what backward needs.

The layer's Function keeps only its input x (and lse), runs the 1x1 projections and the kernel a
chunk at a time (a few images, or a group of heads of one large image), and recomputes the
projections in backward, so a layer stores what a convolution stores.
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
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.float64)


def compute_dtype(t: Tensor) -> torch.dtype:
    """What the layer's projections compute in: float32, or float64 for float64 inputs (the tests' precision)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def kernel_dtype(kernel: Kernel, t: Tensor) -> torch.dtype:
    """The dtype t goes into the kernel in: its own where the kernel takes it, else float32."""
    return t.dtype if t.dtype in kernel.dtypes else torch.float32


def _prepare(t: Tensor | None, like: Tensor) -> Tensor:
    """t as the kernels take it: contiguous, in like's dtype and device; empty for None."""
    return like.new_empty(0) if t is None else t.detach().to(like.dtype).contiguous()


class LocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernel, q, k, v, rel_rows, rel_cols, kernel_size: int, mask: bool):
        flags = (k is not None, rel_rows is not None, mask)
        like = q.new_empty(0, dtype=kernel_dtype(kernel, q))
        inputs = [_prepare(t, like) for t in (q, k, v, rel_rows, rel_cols)]
        out, lse = kernel.forward(*inputs, kernel_size, *flags)
        ctx.save_for_backward(*inputs, lse)
        ctx.kernel, ctx.kernel_size, ctx.flags = kernel, kernel_size, flags
        ctx.dtypes = [None if t is None else t.dtype for t in (q, k, v, rel_rows, rel_cols)]
        return out.to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel_rows, rel_cols, lse = ctx.saved_tensors
        grads = ctx.kernel.backward(_prepare(grad_out, q), q, k, v, rel_rows, rel_cols, lse, ctx.kernel_size,
                                    *ctx.flags)
        grads = [g.to(dtype) if dtype is not None and need else None
                 for g, dtype, need in zip(grads, ctx.dtypes, ctx.needs_input_grad[1:])]
        return (None, *grads, None, None)


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


class LocalSelfAttention(torch.autograd.Function):
    """Projections + attention, a chunk at a time, keeping only x and the log-sum-exp; backward
    recomputes q, k and v chunk by chunk and takes the projections' gradients by hand."""

    @staticmethod
    def forward(ctx, kernel, x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols, kernel_size,
                heads, mask):
        device = x.device.type
        dtype = compute_dtype(x)
        x32 = x.detach().to(dtype).contiguous()
        weights = [w.detach().to(dtype) for w in (query_weight, key_weight, value_weight) if w is not None]
        rel = [_prepare(t, x32) for t in (rel_rows, rel_cols)]
        bias = None if key_bias is None else key_bias.detach().to(dtype)
        flags = (key_weight is not None, rel_rows is not None, mask)
        out = x32.new_empty((x.shape[0], query_weight.shape[0], *x.shape[2:]))
        lse = x32.new_empty((x.shape[0], heads, *x.shape[2:]))
        for chunk in plan_chunks(x.shape[0], heads, query_weight.shape[0] // heads, x.shape[2] * x.shape[3]):
            with torch.autocast(device, enabled=False):  # the kernel computes in float32
                q, k, v = _project(x32[chunk.images], weights, bias, chunk)
            out_chunk, lse[chunk.images, chunk.heads] = kernel.forward(
                q, k, v, *_heads_of(rel, chunk), kernel_size, *flags)
            out[chunk.images, chunk.channels] = out_chunk.flatten(1, 2)
        ctx.save_for_backward(x32, *weights, bias, *rel, lse)
        ctx.kernel, ctx.kernel_size, ctx.heads, ctx.flags = kernel, kernel_size, heads, flags
        ctx.dtypes = (x.dtype, query_weight.dtype, rel_rows.dtype if rel_rows is not None else None)
        # Under autocast the layer answers in autocast's dtype, as the convolutions it replaces do.
        autocast = torch.is_autocast_enabled(device) and dtype == torch.float32
        return out.to(torch.get_autocast_dtype(device) if autocast else x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, *saved = ctx.saved_tensors
        has_keys, has_rel, _ = ctx.flags
        weights, (bias, rel_rows, rel_cols, lse) = saved[: 2 + has_keys], saved[2 + has_keys :]
        heads = ctx.heads
        grad_out = grad_out.to(x.dtype).contiguous()
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[1] else None
        grad_weights = [torch.zeros_like(w) for w in weights]
        grad_bias = None if bias is None else torch.zeros_like(bias)
        grad_rel = [torch.zeros_like(rel_rows), torch.zeros_like(rel_cols)] if has_rel else [None, None]
        for chunk in plan_chunks(x.shape[0], heads, weights[0].shape[0] // heads, x.shape[2] * x.shape[3]):
            x_chunk = x[chunk.images]
            with torch.autocast(x.device.type, enabled=False):
                q, k, v = _project(x_chunk, weights, bias, chunk)
            grad_q, grad_k, grad_v, grad_rows, grad_cols = ctx.kernel.backward(
                grad_out[chunk.images, chunk.channels].unflatten(1, (q.shape[1], -1)), q, k, v,
                *_heads_of((rel_rows, rel_cols), chunk), lse[chunk.images, chunk.heads], ctx.kernel_size, *ctx.flags)
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
        x_dtype, weight_dtype, rel_dtype = ctx.dtypes
        grad_weights = [g.to(weight_dtype) for g in grad_weights]
        if not has_keys:
            grad_weights.insert(1, None)
        return (
            None, None if grad_x is None else grad_x.to(x_dtype), *grad_weights,
            None if grad_bias is None else grad_bias.to(weight_dtype),
            *[None if g is None else g.to(rel_dtype) for g in grad_rel], None, None, None,
        )


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


def local_attention(kernel, q, k, v, rel_rows, rel_cols, kernel_size: int, padding: str) -> Tensor:
    return LocalAttention.apply(kernel, q, k, v, rel_rows, rel_cols, kernel_size, padding == "mask")


def local_self_attention(
    kernel, x, query_weight, key_weight, value_weight, rel_rows, rel_cols, kernel_size, heads, key_bias, padding
) -> Tensor:
    return LocalSelfAttention.apply(kernel, x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols,
                                    kernel_size, heads, padding == "mask")
