"""Memory-bounded local attention: the reference computation run tile by tile.

The image is cut into tiles of query rows (and of images of the batch). Forward computes each
tile's output and keeps nothing of it; backward recomputes one tile at a time and takes its
gradients with autograd. So the k^2-expanded keys, values and logits exist for one tile at a time,
whatever the image size, and a layer's extra memory is its output plus one tile.

`local_self_attention` also moves the 1x1 projections into the tiles. Then q, k and v are never
stored for the whole image either: a layer keeps only its input and its output, as a
convolution does, which is what makes attention models fit where conv models fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import reference
from .call import Call

# Upper bound on the elements of one k^2-expanded tensor of a tile (keys, values, or their
# products with the queries). Four or five of them are alive at once; at 2^20 fp32 elements
# that is ~20 MB, small beside one ResNet activation at batch 16.
TILE_ELEMENTS = 2**20
# On a GPU, where each tile's dozen small kernels cost a launch each: 16x larger tiles (~0.3 GB
# of expanded tensors at once), so a layer runs in a few launches of each, not hundreds.
CUDA_TILE_ELEMENTS = 2**24


@dataclass(frozen=True)
class Tile:
    """Images [batch_start, batch_stop) x query rows [row_start, row_stop) of the output.

    The keys/values the tile needs are rows [context_start, context_stop); pad_top/pad_bottom
    are the window rows that fall outside the image.
    """

    batch_start: int
    batch_stop: int
    row_start: int
    row_stop: int
    context_start: int
    context_stop: int
    pad_top: int
    pad_bottom: int


def plan_tiles(batch: int, height: int, width: int, channels: int, kernel_size: int,
               device: torch.device = torch.device("cpu")) -> list[Tile]:
    """Tiles whose k^2-expanded tensors hold at most TILE_ELEMENTS elements (CUDA_TILE_ELEMENTS on
    a GPU), at least one row."""
    p = kernel_size // 2
    budget = CUDA_TILE_ELEMENTS if device.type == "cuda" else TILE_ELEMENTS
    per_row = channels * kernel_size * kernel_size * width
    rows = max(1, min(height, budget // per_row))
    images = max(1, budget // (per_row * height)) if rows == height else 1
    tiles = []
    for b0 in range(0, batch, images):
        for r0 in range(0, height, rows):
            r1 = min(height, r0 + rows)
            c0, c1 = max(0, r0 - p), min(height, r1 + p)
            tiles.append(Tile(b0, min(batch, b0 + images), r0, r1, c0, c1, p - (r0 - c0), p - (c1 - r1)))
    return tiles


# How each input of a tile function is cut for a tile: the tile's query rows, the rows its
# windows reach, those rows of a tensor shared by all images (batch dimension 1), or untouched.
ROWS, CONTEXT, SHARED_CONTEXT, WHOLE = "rows", "context", "shared_context", "whole"


def _cut(tensor: Tensor | None, how: str, tile: Tile) -> Tensor | None:
    if tensor is None or how == WHOLE:
        return tensor
    if how == ROWS:
        return tensor[tile.batch_start : tile.batch_stop, ..., tile.row_start : tile.row_stop, :]
    if how == CONTEXT:
        return tensor[tile.batch_start : tile.batch_stop, ..., tile.context_start : tile.context_stop, :]
    return tensor[..., tile.context_start : tile.context_stop, :]


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype | None]:
    """The forward's autocast state, which backward re-enters so that the recompute matches it."""
    if not torch.amp.is_autocast_available(device_type):
        return device_type, False, None
    return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _TiledCheckpoint(torch.autograd.Function):
    """out[tile] = tile_fn(inputs cut for the tile, tile), for every tile; recomputed in backward."""

    @staticmethod
    def forward(ctx, tile_fn: Callable, tiles: list[Tile], cuts: Sequence[str], *inputs):
        ctx.tile_fn, ctx.tiles, ctx.cuts = tile_fn, tiles, cuts
        ctx.autocast = _autocast_state(inputs[0].device.type)
        ctx.save_for_backward(*inputs)
        out = None
        for tile in tiles:
            part = tile_fn(*(_cut(t, how, tile) for t, how in zip(inputs, cuts)), tile=tile)
            if out is None:
                shape = (inputs[0].shape[0], *part.shape[1:-2], inputs[0].shape[-2], part.shape[-1])
                out = part.new_empty(shape)
            out[tile.batch_start : tile.batch_stop, ..., tile.row_start : tile.row_stop, :] = part
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        inputs = ctx.saved_tensors
        wanted = ctx.needs_input_grad[3:]
        grads = [torch.zeros_like(t) if need else None for t, need in zip(inputs, wanted)]
        device_type, autocast_enabled, autocast_dtype = ctx.autocast
        for tile in ctx.tiles:
            parts = [_cut(t, how, tile) for t, how in zip(inputs, ctx.cuts)]
            leaves = [
                p.detach().requires_grad_(need) if p is not None else None for p, need in zip(parts, wanted)
            ]
            with torch.enable_grad(), torch.autocast(device_type, autocast_dtype, enabled=autocast_enabled):
                out = ctx.tile_fn(*leaves, tile=tile)
            needing = [i for i, need in enumerate(wanted) if need]
            tile_grad = grad_out[tile.batch_start : tile.batch_stop, ..., tile.row_start : tile.row_stop, :]
            for i, g in zip(needing, torch.autograd.grad(out, [leaves[i] for i in needing], tile_grad)):
                _cut(grads[i], ctx.cuts[i], tile).add_(g)
        return (None, None, None, *grads)


def _operator_tile(q, k, v, rel_rows, rel_cols, *, tile: Tile, kernel_size: int, padding: str) -> Tensor:
    pad_rows = (tile.pad_top, tile.pad_bottom)
    return reference.window_attention(q, k, v, rel_rows, rel_cols, kernel_size, padding, pad_rows)


def can_run(call: Call) -> str | None:
    return None  # anywhere, with gradients: the fallback of every device


def local_attention(*, q, k, v, rel_rows, rel_cols, kernel_size: int, padding: str) -> Tensor:
    batch, heads, dim, height, width = q.shape
    tiles = plan_tiles(batch, height, width, heads * dim, kernel_size, q.device)

    def tile_fn(*parts, tile):
        return _operator_tile(*parts, tile=tile, kernel_size=kernel_size, padding=padding)

    cuts = (ROWS, CONTEXT, CONTEXT, WHOLE, WHOLE)
    return _TiledCheckpoint.apply(tile_fn, tiles, cuts, q, k, v, rel_rows, rel_cols)


def local_self_attention(
    *, x, query_weight, key_weight, value_weight, rel_rows, rel_cols, kernel_size, heads, key_bias, padding
) -> Tensor:
    batch, _, height, width = x.shape
    tiles = plan_tiles(batch, height, width, query_weight.shape[0], kernel_size, x.device)

    def tile_fn(x_context, w_q, w_k, w_v, bias_context, rows, cols, *, tile):
        first = tile.row_start - tile.context_start
        x_rows = x_context[:, :, first : first + tile.row_stop - tile.row_start]
        q = reference.project(x_rows, w_q, heads)
        k = None
        if w_k is not None:
            k = reference.project(x_context, w_k, heads)
            if bias_context is not None:
                k = k + bias_context.unflatten(1, (heads, -1))
        v = reference.project(x_context, w_v, heads)
        return _operator_tile(q, k, v, rows, cols, tile=tile, kernel_size=kernel_size, padding=padding).flatten(1, 2)

    cuts = (CONTEXT, WHOLE, WHOLE, WHOLE, SHARED_CONTEXT, WHOLE, WHOLE)
    inputs = (x, query_weight, key_weight, value_weight, key_bias, rel_rows, rel_cols)
    return _TiledCheckpoint.apply(tile_fn, tiles, cuts, *inputs)
