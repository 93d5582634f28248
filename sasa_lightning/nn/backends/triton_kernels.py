"""Triton kernels of local attention: forward, and backward in two passes (queries, then keys).

Layout as the cpu kernel's: q, k, v, out and their gradients (B, N, D, H, W) contiguous; rel_rows,
rel_cols (N, K, D/2); lse and delta (B, N, H, W). A program takes a tile of TILE_H x TILE_W pixels
of one (image, head) and holds them as a block of PIXELS x BLOCK_D values (the head's channels
padded to a power of two, masked).

Forward, per window offset (a, c): the tile's keys and values at that offset (a load of the tile
shifted by (a - p, c - p); the K^2 shifted loads of one tile overlap almost entirely and are served
by L1/L2, so each key and value is read from HBM about once per tile and its halo), the logits
q.k + q.r, and flash attention's running maximum, sum and output. It writes the output and one
log-sum-exp per pixel.

Backward, pass 1 (queries): the probabilities are recomputed from the log-sum-exp; delta =
sum p (dout.v) needs a first sweep over the window (the output is not kept), the second sweep
forms the logits' gradients ds = p (dout.v - delta) and from them the gradient of q, and the
embeddings' gradients summed over the tile's pixels, written per program and summed by the
caller (deterministic, no atomics on a buffer every program shares).

Backward, pass 2 (keys): the key and value at pixel u receive from the queries whose windows hold
u, the pixels u - (a - p, c - p): a program takes a tile of keys and gathers, for each offset,
the shifted tile of queries with their lse, delta and dout, recomputes the probability of the
pair, and accumulates dv += p dout and dk += ds q. So dk and dv are written once, by one program,
without atomics or a k^2-expanded tensor: the same gather as the compiled backend's written-out
backward (`_transposed_window_sum`), fused.

Why per-offset FMA loops rather than tl.dot on tensor cores (a tile x halo logit matrix masked to
the window): the paper's heads are 8 to 64 channels wide, most of them 8 to 32 (64 to 256
channels in 8 heads), below or at the 16 tensor cores need along the reduced dimension; a tile x
halo product computes every pair of the tile and its halo, (8 + 6)^2 / 7^2 = 4x the pairs the
window has for an 8 x 8 tile and k = 7; and q.r would need a gather from a (pixel, offset) table
per pair. The FMA form is exact in float32 for every head dim and window, and it is what the
interpreter and the sm_90 compile prove correct today. Its price, by the performance model
(benchmarks/performance_model.py, README "Performance model"): at about 30 FLOPs per byte moved,
where the float32 units of an H100 or H200 consume 20 or 14 per byte of HBM bandwidth, the
kernels are bound by the CUDA cores' float32 rate, not by memory. A tensor-core form would
lower that bound by roughly (tensor / FP32 rate) / (wasted pairs x head-dim padding), about 15 /
(4 x 2) = 2x at head dim 8 and 15 / 4 = 4x at 32 and 64: the next step once a GPU can measure it.

Registers rather than shared memory: Triton keeps a block in registers spread over the program's
threads, and the shifted loads of neighbouring offsets are served by L1. A tile's blocks hold
TILE_ELEMENTS = 1024 values (launch_config: 64 pixels at head dim 8 and 16, 32 at 32, 16 at 64),
8 per thread of 4 warps; the compiled kernels then use 70-168 registers in float32, bf16 and
fp16 and spill only in the backward query kernel at head dim 8 (16-28 bytes, where ptxas holds
it to 96 registers), where at 2048 values that kernel spilled 100 bytes and more at head dims 32
and 64; and shared memory for Triton's reductions only (0.25-8 KiB of the 227 KiB a block may
have; benchmarks/triton_compile.py prints each).

The options that change the code (keys or not, relative logits or not, masked or zero padding)
are run-time flags, uniform across a launch: one compiled kernel per dtype and head-dim block
serves every layer of a model (80 variants in all; compiling them for sm_90 takes under a minute
on 2 cores).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _tile(tile, tiles_w, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr):
    """Row, column and inside-the-image mask of the tile's pixels."""
    pixel = tl.arange(0, TILE_H * TILE_W)
    rows = (tile // tiles_w) * TILE_H + pixel // TILE_W
    cols = (tile % tiles_w) * TILE_W + pixel % TILE_W
    return rows, cols, (rows < H) & (cols < W)


@triton.jit
def _load_block(ptr, base, rows, cols, inside, W, plane, D, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """(PIXELS, BLOCK_D) values of a (D, H, W) plane stack at the given pixels; 0 where not inside."""
    channels = tl.arange(0, BLOCK_D)
    offsets = base + channels[None, :] * plane + (rows * W + cols)[:, None]
    return tl.load(ptr + offsets, mask=inside[:, None] & (channels < D)[None, :], other=0.0).to(ACC)


@triton.jit
def _embedding(ptr, head, offset, K, HALF, first: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """An offset's embedding (HALF values) placed on the query channels it multiplies: the first
    half of the head's channels for a row offset, the second for a column offset; 0 elsewhere."""
    channels = tl.arange(0, BLOCK_D)
    if first:
        index = channels
    else:
        index = channels - HALF
    valid = (index >= 0) & (index < HALF)
    return tl.load(ptr + (head * K + offset) * HALF + index, mask=valid, other=0.0).to(ACC)


@triton.jit
def _neighbours(q, k_ptr, v_ptr, rows_ptr, cols_ptr, base, head, rows, cols, a, c, H, W, plane, D, HALF, K,
                has_keys, has_rel, mask, PIXELS: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """Window offset (a, c) of a tile: the neighbours' logits q.k + q.r (-inf where a neighbour is
    outside and mask is set), keys (0 without keys), values, and the offset's embedding r."""
    radius = K // 2
    key_rows = rows + a - radius
    key_cols = cols + c - radius
    key_inside = (key_rows >= 0) & (key_rows < H) & (key_cols >= 0) & (key_cols < W)
    logits = tl.zeros([PIXELS], dtype=ACC)
    keys = tl.zeros([PIXELS, BLOCK_D], dtype=ACC)
    embedding = tl.zeros([BLOCK_D], dtype=ACC)
    if has_keys:
        keys = _load_block(k_ptr, base, key_rows, key_cols, key_inside, W, plane, D, BLOCK_D, ACC)
        logits += tl.sum(q * keys, axis=1)
    if has_rel:
        embedding = (_embedding(rows_ptr, head, a, K, HALF, True, BLOCK_D, ACC)
                     + _embedding(cols_ptr, head, c, K, HALF, False, BLOCK_D, ACC))
        logits += tl.sum(q * embedding[None, :], axis=1)
    if mask:
        logits = tl.where(key_inside, logits, float("-inf"))
    values = _load_block(v_ptr, base, key_rows, key_cols, key_inside, W, plane, D, BLOCK_D, ACC)
    return logits, keys, values, embedding


# The sizes and flags are not specialised on (Triton would compile a variant for every value that
# is 1 or a multiple of 16): one compiled kernel per dtype and block shape serves every layer.
SCALARS = ["N", "H", "W", "D", "HALF", "K", "tiles_w", "has_keys", "has_rel", "mask"]


@triton.jit(do_not_specialize=SCALARS)
def forward_kernel(
    q_ptr, k_ptr, v_ptr, rows_ptr, cols_ptr, out_ptr, lse_ptr,
    N, H, W, D, HALF, K, tiles_w, has_keys, has_rel, mask,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    tile = tl.program_id(0)
    image_head = tl.program_id(1)
    head = image_head % N
    plane = H * W
    base = image_head.to(tl.int64) * D * plane
    rows, cols, inside = _tile(tile, tiles_w, H, W, TILE_H, TILE_W)
    q = _load_block(q_ptr, base, rows, cols, inside, W, plane, D, BLOCK_D, ACC)

    maximum = tl.full([TILE_H * TILE_W], float("-inf"), dtype=ACC)
    total = tl.zeros([TILE_H * TILE_W], dtype=ACC)
    acc = tl.zeros([TILE_H * TILE_W, BLOCK_D], dtype=ACC)
    for a in range(K):
        for c in range(K):
            logits, _, values, _ = _neighbours(q, k_ptr, v_ptr, rows_ptr, cols_ptr, base, head, rows, cols, a, c, H, W,
                                               plane, D, HALF, K, has_keys, has_rel, mask, TILE_H * TILE_W, BLOCK_D,
                                               ACC)
            new_maximum = tl.maximum(maximum, logits)
            # All logits so far masked: keep the sums at 0 rather than exp(-inf - -inf) = nan.
            shift = tl.where(new_maximum == float("-inf"), 0.0, new_maximum)
            scale = tl.exp(maximum - shift)
            weights = tl.exp(logits - shift)
            total = total * scale + weights
            acc = acc * scale[:, None] + weights[:, None] * values
            maximum = new_maximum

    channels = tl.arange(0, BLOCK_D)
    pixels = rows * W + cols
    total = tl.where(inside, total, 1.0)  # pixels of the tile beyond the image: no 0 / 0
    out = acc / total[:, None]
    tl.store(out_ptr + base + channels[None, :] * plane + pixels[:, None], out.to(out_ptr.dtype.element_ty),
             mask=inside[:, None] & (channels < D)[None, :])
    tl.store(lse_ptr + image_head.to(tl.int64) * plane + pixels, maximum + tl.log(total), mask=inside)


@triton.jit(do_not_specialize=SCALARS)
def backward_query_kernel(
    grad_out_ptr, q_ptr, k_ptr, v_ptr, rows_ptr, cols_ptr, lse_ptr, grad_q_ptr, delta_ptr, grad_rows_ptr,
    grad_cols_ptr,
    N, H, W, D, HALF, K, tiles_w, has_keys, has_rel, mask,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
):
    """dq and delta per pixel; the embeddings' gradients of this tile at
    grad_rows/cols[image_head, tile] (BLOCK_K x BLOCK_D, channels placed as in _embedding)."""
    tile = tl.program_id(0)
    image_head = tl.program_id(1)
    head = image_head % N
    plane = H * W
    base = image_head.to(tl.int64) * D * plane
    rows, cols, inside = _tile(tile, tiles_w, H, W, TILE_H, TILE_W)
    q = _load_block(q_ptr, base, rows, cols, inside, W, plane, D, BLOCK_D, ACC)
    grad_out = _load_block(grad_out_ptr, base, rows, cols, inside, W, plane, D, BLOCK_D, ACC)
    pixels = rows * W + cols
    lse = tl.load(lse_ptr + image_head.to(tl.int64) * plane + pixels, mask=inside, other=0.0).to(ACC)

    # Sweep 1: delta = sum over the window of p (dout . v), which is dout . out.
    delta = tl.zeros([TILE_H * TILE_W], dtype=ACC)
    for a in range(K):
        for c in range(K):
            logits, _, values, _ = _neighbours(q, k_ptr, v_ptr, rows_ptr, cols_ptr, base, head, rows, cols, a, c, H, W,
                                               plane, D, HALF, K, has_keys, has_rel, mask, TILE_H * TILE_W, BLOCK_D,
                                               ACC)
            delta += tl.exp(logits - lse) * tl.sum(grad_out * values, axis=1)

    # Sweep 2: ds = p (dout . v - delta); dq = sum ds (k + r); the embeddings' gradients.
    grad_q = tl.zeros([TILE_H * TILE_W, BLOCK_D], dtype=ACC)
    grad_rows = tl.zeros([BLOCK_K, BLOCK_D], dtype=ACC)
    grad_cols = tl.zeros([BLOCK_K, BLOCK_D], dtype=ACC)
    offsets = tl.arange(0, BLOCK_K)
    for a in range(K):
        for c in range(K):
            logits, keys, values, embedding = _neighbours(q, k_ptr, v_ptr, rows_ptr, cols_ptr, base, head, rows, cols, a,
                                                          c, H, W, plane, D, HALF, K, has_keys, has_rel, mask,
                                                          TILE_H * TILE_W, BLOCK_D, ACC)
            grad_logits = tl.exp(logits - lse) * (tl.sum(grad_out * values, axis=1) - delta)
            grad_logits = tl.where(inside, grad_logits, 0.0)
            grad_q += grad_logits[:, None] * (keys + embedding[None, :])
            if has_rel:
                per_channel = tl.sum(grad_logits[:, None] * q, axis=0)
                grad_rows += tl.where(offsets[:, None] == a, per_channel[None, :], 0.0)
                grad_cols += tl.where(offsets[:, None] == c, per_channel[None, :], 0.0)

    channels = tl.arange(0, BLOCK_D)
    tl.store(grad_q_ptr + base + channels[None, :] * plane + pixels[:, None], grad_q.to(grad_q_ptr.dtype.element_ty),
             mask=inside[:, None] & (channels < D)[None, :])
    tl.store(delta_ptr + image_head.to(tl.int64) * plane + pixels, delta, mask=inside)
    if has_rel:
        partial = ((image_head.to(tl.int64) * tl.num_programs(0) + tile) * BLOCK_K + offsets[:, None]) * BLOCK_D
        tl.store(grad_rows_ptr + partial + channels[None, :], grad_rows)
        tl.store(grad_cols_ptr + partial + channels[None, :], grad_cols)


@triton.jit(do_not_specialize=SCALARS[:-1])
def backward_key_kernel(
    grad_out_ptr, q_ptr, k_ptr, v_ptr, rows_ptr, cols_ptr, lse_ptr, delta_ptr, grad_k_ptr, grad_v_ptr,
    N, H, W, D, HALF, K, tiles_w, has_keys, has_rel,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr,
):
    """dk and dv of a tile of key pixels, gathered from the queries whose windows hold them.

    A key inside the image is never masked, so the mask flag plays no part here; neighbours
    outside the image (zero padding) are not keys anyone receives a gradient for."""
    tile = tl.program_id(0)
    image_head = tl.program_id(1)
    head = image_head % N
    plane = H * W
    base = image_head.to(tl.int64) * D * plane
    rows, cols, inside = _tile(tile, tiles_w, H, W, TILE_H, TILE_W)
    keys = tl.zeros([TILE_H * TILE_W, BLOCK_D], dtype=ACC)
    if has_keys:
        keys = _load_block(k_ptr, base, rows, cols, inside, W, plane, D, BLOCK_D, ACC)
    values = _load_block(v_ptr, base, rows, cols, inside, W, plane, D, BLOCK_D, ACC)
    radius = K // 2
    row_embedding = tl.zeros([BLOCK_D], dtype=ACC)
    col_embedding = tl.zeros([BLOCK_D], dtype=ACC)
    grad_k = tl.zeros([TILE_H * TILE_W, BLOCK_D], dtype=ACC)
    grad_v = tl.zeros([TILE_H * TILE_W, BLOCK_D], dtype=ACC)
    for a in range(K):
        if has_rel:
            row_embedding = _embedding(rows_ptr, head, a, K, HALF, True, BLOCK_D, ACC)
        query_rows = rows - a + radius
        for c in range(K):
            if has_rel:
                col_embedding = _embedding(cols_ptr, head, c, K, HALF, False, BLOCK_D, ACC)
            query_cols = cols - c + radius
            query_inside = inside & (query_rows >= 0) & (query_rows < H) & (query_cols >= 0) & (query_cols < W)
            q = _load_block(q_ptr, base, query_rows, query_cols, query_inside, W, plane, D, BLOCK_D, ACC)
            grad_out = _load_block(grad_out_ptr, base, query_rows, query_cols, query_inside, W, plane, D, BLOCK_D, ACC)
            query_pixels = image_head.to(tl.int64) * plane + query_rows * W + query_cols
            lse = tl.load(lse_ptr + query_pixels, mask=query_inside, other=0.0).to(ACC)
            logits = tl.sum(q * (keys + (row_embedding + col_embedding)[None, :]), axis=1)
            weights = tl.where(query_inside, tl.exp(logits - lse), 0.0)
            grad_v += weights[:, None] * grad_out
            if has_keys:
                delta = tl.load(delta_ptr + query_pixels, mask=query_inside, other=0.0).to(ACC)
                grad_logits = weights * (tl.sum(grad_out * values, axis=1) - delta)
                grad_k += grad_logits[:, None] * q

    channels = tl.arange(0, BLOCK_D)
    offsets = base + channels[None, :] * plane + (rows * W + cols)[:, None]
    store_mask = inside[:, None] & (channels < D)[None, :]
    tl.store(grad_v_ptr + offsets, grad_v.to(grad_v_ptr.dtype.element_ty), mask=store_mask)
    if has_keys:
        tl.store(grad_k_ptr + offsets, grad_k.to(grad_k_ptr.dtype.element_ty), mask=store_mask)
