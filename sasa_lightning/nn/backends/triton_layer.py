"""The whole layer on a GPU, the triton backend's local_self_attention: 1x1 projections as matrix
products on tensor cores, the kernels on their result, the projections' gradients as matrix
products, in chunks of images sized by a memory budget.

- One product of the pixels, (b, H*W, C_in), by the stacked weights (C_in, 3C) gives q, k and v
  channels-last, (b, H, W, 3C), which is the layout the kernels read (a head's channels
  contiguous per pixel); x may be NCHW or channels-last, either is a strided view the product
  reads as it is. Everything is in the dtype the layer computes in: bf16 under bf16 autocast.
- The output is channels-last (b, C, H, W), the kernels' natural store; so is grad_x, which
  the product grad_qkv (b, H*W, 3C) @ W gives.
- Backward recomputes q, k, v, writes dq to its own buffer and dk, dv over k and v (the key
  pass reads only its own tile's keys and values), so a chunk holds 4C channels per pixel, not
  6C; then dx = dq Wq + d[k v] W[k v], dW = d(qkv)^T x.
- The layer saves x and lse, as the CPU path does; a chunk's projections exist only while it runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import triton_launch

# Bytes of a chunk's projections (q, k, v and dq, in the compute dtype): a few images of a large
# layer, the whole batch of a small one (SASA-ResNet-50's layers at batch 64: one to two chunks),
# so a layer's peak stays near a convolution's while each launch still fills the GPU.
CHUNK_BYTES = 64 * 2**20


def plan_images(batch: int, bytes_per_image: int) -> list[slice]:
    """Equal runs of images whose projections fit CHUNK_BYTES (one image at least)."""
    chunks = max(1, min(batch, -(-batch * bytes_per_image // CHUNK_BYTES)))
    size = -(-batch // chunks)
    return [slice(start, min(batch, start + size)) for start in range(0, batch, size)]


def _pixels(x: Tensor) -> Tensor:
    """(b, C, H, W) as (b, H*W, C): a view for NCHW and channels-last alike."""
    return x.permute(0, 2, 3, 1).flatten(1, 2)


def _product(pixels: Tensor, weight: Tensor) -> Tensor:
    """pixels (b, P, C_in) @ weight^T -> (b, P, C_out) contiguous, without copying either operand."""
    if pixels.is_contiguous():
        return torch.mm(pixels.flatten(0, 1), weight.t()).unflatten(0, pixels.shape[:2])
    return torch.bmm(pixels, weight.t().expand(len(pixels), -1, -1))


def _weight_grad(grad: Tensor, pixels: Tensor) -> Tensor:
    """sum over images and pixels of grad (b, P, C_out)^T pixels (b, P, C_in) -> (C_out, C_in)."""
    if pixels.is_contiguous():
        return torch.mm(grad.flatten(0, 1).t(), pixels.flatten(0, 1))
    return torch.bmm(grad.transpose(1, 2), pixels).sum(0)


def _heads(t: Tensor, heads: int, height: int, width: int) -> Tensor:
    """Channels (b, P, N * D) of a projection (a slice of one) as the kernels' (b, N, H, W, D) view."""
    batch, _, channels = t.shape
    return t.unflatten(1, (height, width)).unflatten(3, (heads, channels // heads)).permute(0, 3, 1, 2, 4)


class _Projections:
    """q, k, v of a chunk of images: one product into (b, H*W, parts * C), the key bias added."""

    def __init__(self, pixels: Tensor, weight: Tensor, channels: int, key_bias: Tensor | None) -> None:
        self.qkv = _product(pixels, weight)
        self.channels = channels
        self.has_keys = weight.shape[0] == 3 * channels
        if key_bias is not None:
            self.qkv[..., channels:2 * channels] += key_bias.flatten(2).transpose(1, 2)

    def part(self, index: int) -> Tensor:
        return self.qkv[..., index * self.channels:(index + 1) * self.channels]

    def views(self, heads: int, height: int, width: int) -> tuple[Tensor, Tensor | None, Tensor]:
        q = _heads(self.part(0), heads, height, width)
        k = _heads(self.part(1), heads, height, width) if self.has_keys else None
        v = _heads(self.part(2 if self.has_keys else 1), heads, height, width)
        return q, k, v


def _stacked(*weights: Tensor | None) -> Tensor:
    return torch.cat([w for w in weights if w is not None])


def _bytes_per_image(x: Tensor, parts: int, channels: int) -> int:
    return (parts + 1) * channels * x.shape[2] * x.shape[3] * x.element_size()


def layer_forward(x: Tensor, query_weight: Tensor, key_weight: Tensor | None, value_weight: Tensor,
                  key_bias: Tensor | None, rel_rows: Tensor | None, rel_cols: Tensor | None, kernel_size: int,
                  heads: int, mask: bool) -> tuple[Tensor, Tensor]:
    """(out (B, C, H, W) channels-last, lse (B, heads, H, W))."""
    batch, _, height, width = x.shape
    channels = query_weight.shape[0]
    weight = _stacked(query_weight, key_weight, value_weight)
    rel = [None if t is None else t.contiguous() for t in (rel_rows, rel_cols)]
    out = torch.empty((batch, channels, height, width), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    lse = x.new_empty((batch, heads, height, width), dtype=triton_launch.accumulator(x.dtype))
    pixels = _pixels(x)
    for images in plan_images(batch, _bytes_per_image(x, len(weight) // channels, channels)):
        projections = _Projections(pixels[images], weight, channels, key_bias)
        out_view = _heads(_pixels(out[images]), heads, height, width)
        triton_launch.forward(*projections.views(heads, height, width), *rel, out_view, lse[images], kernel_size, mask)
    return out, lse


def layer_backward(grad_out: Tensor, x: Tensor, query_weight: Tensor, key_weight: Tensor | None,
                   value_weight: Tensor, key_bias: Tensor | None, rel_rows: Tensor | None, rel_cols: Tensor | None,
                   lse: Tensor, kernel_size: int, heads: int, mask: bool,
                   needs_grad_x: bool) -> list[Tensor | None]:
    """[grad_x (channels-last), grad_query_weight, grad_key_weight, grad_value_weight, grad_key_bias,
    grad_rel_rows, grad_rel_cols], None for an absent input (and for x unless needs_grad_x)."""
    batch, _, height, width = x.shape
    channels = query_weight.shape[0]
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    weight = _stacked(query_weight, key_weight, value_weight)
    rel = [None if t is None else t.contiguous() for t in (rel_rows, rel_cols)]
    pixels, grad_pixels = _pixels(x), _pixels(grad_out)
    grad_x = torch.empty_like(x, memory_format=torch.channels_last) if needs_grad_x else None
    chunks = plan_images(batch, _bytes_per_image(x, len(weight) // channels, channels))
    # Summed over chunks in the accumulator's dtype (a single chunk's stay in the products' dtype).
    sum_dtype = triton_launch.accumulator(x.dtype) if len(chunks) > 1 else None
    sums: dict[str, Tensor] = {}
    for images in chunks:
        projections = _Projections(pixels[images], weight, channels, key_bias)
        q, k, v = projections.views(heads, height, width)
        grad_q = torch.empty_like(projections.part(0))
        rel_grads = triton_launch.backward(_heads(grad_pixels[images], heads, height, width), q, k, v, *rel,
                                           lse[images], _heads(grad_q, heads, height, width), k, v, kernel_size, mask)
        grad_kv = projections.qkv[..., channels:]  # dk and dv, written over k and v
        if grad_x is not None:
            grad_x_chunk = _pixels(grad_x[images])
            torch.bmm(grad_q, query_weight.expand(len(grad_q), -1, -1), out=grad_x_chunk)
            grad_x_chunk.baddbmm_(grad_kv, weight[channels:].expand(len(grad_q), -1, -1))
        parts = [grad_q] + [projections.part(index) for index in range(1, len(weight) // channels)]
        for index, part in enumerate(parts):  # each weight's gradient its own tensor (an op's outputs may not alias)
            _accumulate(sums, f"weight{index}", _weight_grad(part, pixels[images]), sum_dtype)
        if key_bias is not None:
            _accumulate(sums, "bias", grad_kv[..., :channels].sum(0, keepdim=True), sum_dtype)
        if rel_grads is not None:
            _accumulate(sums, "rows", rel_grads[0], sum_dtype)
            _accumulate(sums, "cols", rel_grads[1], sum_dtype)
    grad_weights = [sums[f"weight{index}"].to(weight.dtype) for index in range(len(weight) // channels)]
    if key_weight is None:
        grad_weights.insert(1, None)
    grad_bias = None
    if key_bias is not None:
        grad_bias = sums["bias"].transpose(1, 2).reshape(key_bias.shape).to(key_bias.dtype).contiguous()
    grad_rel = [sums[name].to(rel_rows.dtype) if name in sums else None for name in ("rows", "cols")]
    return [grad_x, *grad_weights, grad_bias, *grad_rel]


def _accumulate(sums: dict[str, Tensor], name: str, value: Tensor, dtype: torch.dtype | None) -> None:
    value = value if dtype is None else value.to(dtype)
    sums[name] = sums[name] + value if name in sums else value
