"""Triton kernels of local attention on tensor cores: forward, and backward in two passes (queries,
then keys).

Layout: every pixel tensor (q, k, v, out and their gradients) is addressed as (image, head, row,
column, channel) with the channel stride 1 and the other four strides passed in, so q, k and v
can be slices of one channels-last (B, H, W, 3C) projection and the output a channels-last
(B, H, W, C) activation. rel_rows, rel_cols (N, K, D/2) contiguous; lse and delta (B, N, H, W)
contiguous.

A program takes a tile of TILE_H x TILE_W query pixels of one (image, head) and the halo of
(TILE_H + K - 1) x (TILE_W + K - 1) key pixels that their windows cover, flattened into blocks of
BLOCK_M and BLOCK_HALO (powers of two, the rest masked). The logits of every query against every
key of the halo are one matrix product on tensor cores, S = Q K^T (BLOCK_M x BLOCK_HALO), the
pairs outside a query's window masked to -inf; the output is P V. With a 2 x 8 tile and k = 7
the halo is 8 x 14 = 112 keys in a block of 128, so 38 % of the pairs computed are in a window:
the tensor cores do 2.6x the products the window needs, and still finish far sooner than the
CUDA cores' per-offset loops did (about 5 % of their float32 rate, with a reduction across
threads per offset). Head dims below 16 are zero-padded to 16, the tensor cores' reduction width.

The relative logits q.r (r = [r_row(a), r_col(c)], a and c the row and column offsets in the
window) are products too. R2 (2 BLOCK_R x BLOCK_D) holds the row embeddings on the first half of
the channels in its first BLOCK_R rows and the column embeddings on the second half in the rest,
so QR = Q R2^T gives each query its K row and K column logits. Shifted by the query's row and
column in the tile (a gather), they become U2, indexed by the halo row and halo column, and the
logits gain U2 E2^T, where E2 is the one-hot of each halo key's row and column: one more product
of inner width 2 BLOCK_R instead of a gather per pair. U2 is float32; for bf16 and fp16 inputs it
enters the product as two operands, its rounding and the remainder (hi + lo), so q.r keeps about
float32's precision, as the q.k products of bf16 inputs (exact in the float32 accumulator) do.

Softmax: with the whole window in one block there is no running maximum: the row maximum, exp2
of the scaled logits, their sum, one product with V, and lse = log of the sum per pixel. The
output of bf16/fp16 inputs is the product of P rounded to the inputs' dtype, as flash attention
rounds it.

Backward, pass 1 (queries), a program per row of tiles of one (image, head), looping over the
row's tiles: P recomputed from lse; dP = dO V^T; delta = rowsum(P dP) (the whole window is in
the block, so no sweep over the output is needed); dS = P (dP - delta); dQ = dS K, plus the q.r
part: dS summed per halo row and column (dS E2), shifted back to window offsets (dSa), dQ +=
dSa R2, and the embeddings' gradients dSa^T Q summed over the row's tiles, one partial per
program (deterministic, no atomics), summed by the caller.

Backward, pass 2 (keys): a program per tile of keys and the halo of queries whose windows hold
them, the same geometry mirrored (the window is symmetric); S^T = K Q^T with the q.r logits of
the halo's queries shifted to the tile's key rows and columns, P^T from the queries' lse,
dV = P^T dO, dS^T = P^T (V dO^T - delta), dK = dS^T Q. Each key's gradients are written once,
by one program, without atomics. A program reads only its own tile's keys and values, so the
layer lets it write dK and dV over them (the layer's backward holds q, k, v and dq, not 6 C
channels per pixel).

The flags (keys or not, relative logits or not, masked or zero padding) and the sizes are run-time
values, uniform across a launch: one compiled kernel per dtype and block shape serves every layer
of a model.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _operand(x, DT: tl.constexpr, UPCAST: tl.constexpr):
    """x rounded to the products' operand dtype DT (the inputs'). UPCAST: Triton's interpreter
    multiplies bf16 bit patterns as integers, so there the rounded values go in as float32."""
    x = x.to(DT)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _dot_precise_a(a, b, acc, DT: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
                   UPCAST: tl.constexpr):
    """acc + a @ b for a float32 a and an operand b: with SPLIT (bf16/fp16 operands) a goes in as
    its rounding and its remainder, so the product keeps about float32's precision."""
    high = _operand(a, DT, UPCAST)
    acc = tl.dot(high, b, acc, input_precision=PRECISION)
    if SPLIT:
        acc = tl.dot(_operand(a - high.to(a.dtype), DT, UPCAST), b, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _dot_precise_b(a, b, acc, DT: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
                   UPCAST: tl.constexpr):
    """acc + a @ b for an operand a and a float32 b, b split as in _dot_precise_a."""
    high = _operand(b, DT, UPCAST)
    acc = tl.dot(a, high, acc, input_precision=PRECISION)
    if SPLIT:
        acc = tl.dot(a, _operand(b - high.to(b.dtype), DT, UPCAST), acc, input_precision=PRECISION)
    return acc


@triton.jit
def _tile(row0, col0, H, W, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_M: tl.constexpr):
    """Row and column in the tile, in the image, and inside-the-image mask of a tile's pixels."""
    m = tl.arange(0, BLOCK_M)
    local_row = m // TILE_W
    local_col = m % TILE_W
    rows = row0 + local_row
    cols = col0 + local_col
    inside = (m < TILE_H * TILE_W) & (rows < H) & (cols < W)
    return local_row, local_col, rows, cols, inside


@triton.jit
def _halo(row0, col0, H, W, K, TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_HALO: tl.constexpr):
    """The same for the tile's halo, (TILE_H + K - 1) x (TILE_W + K - 1) pixels from (row0 - K//2,
    col0 - K//2); `real` marks the halo's own entries of the block."""
    j = tl.arange(0, BLOCK_HALO)
    width = TILE_W + K - 1
    halo_row = j // width
    halo_col = j % width
    rows = row0 - K // 2 + halo_row
    cols = col0 - K // 2 + halo_col
    real = j < (TILE_H + K - 1) * width
    inside = real & (rows >= 0) & (rows < H) & (cols >= 0) & (cols < W)
    return halo_row, halo_col, rows, cols, real, inside


@triton.jit
def _load(ptr, base, rows, cols, valid, stride_h, stride_w, D, BLOCK_D: tl.constexpr):
    """(pixels, BLOCK_D) values at the given pixels, channels contiguous; 0 where not valid."""
    channels = tl.arange(0, BLOCK_D)
    offsets = base + (rows * stride_h + cols * stride_w)[:, None] + channels[None, :]
    return tl.load(ptr + offsets, mask=valid[:, None] & (channels < D)[None, :], other=0.0)


@triton.jit
def _store(ptr, base, rows, cols, valid, stride_h, stride_w, D, value, BLOCK_D: tl.constexpr):
    channels = tl.arange(0, BLOCK_D)
    offsets = base + (rows * stride_h + cols * stride_w)[:, None] + channels[None, :]
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=valid[:, None] & (channels < D)[None, :])


@triton.jit
def _embeddings(rows_ptr, cols_ptr, head, K, HALF, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """R2 (2 BLOCK_R x BLOCK_D): row offset a's embedding at [a, :HALF], column offset c's at
    [BLOCK_R + c, HALF:D], zeros elsewhere."""
    r = tl.arange(0, 2 * BLOCK_R)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    is_row = r < BLOCK_R
    offset = tl.where(is_row, r, r - BLOCK_R)
    channel = tl.where(is_row, d, d - HALF)
    valid = (offset < K) & (channel >= 0) & (channel < HALF) & (d < D)
    address = (head * K + offset) * HALF + channel
    return (tl.load(rows_ptr + address, mask=valid & is_row, other=0.0)
            + tl.load(cols_ptr + address, mask=valid & (r >= BLOCK_R), other=0.0))


@triton.jit
def _relative(rows_ptr, cols_ptr, head, K, HALF, D, has_rel, DT: tl.constexpr, UPCAST: tl.constexpr,
              BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """R2 as a product operand; zeros without relative logits (then the pointers are not embeddings)."""
    r2 = tl.zeros([2 * BLOCK_R, BLOCK_D], dtype=DT)
    if has_rel:
        r2 = _embeddings(rows_ptr, cols_ptr, head, K, HALF, D, BLOCK_R, BLOCK_D).to(DT)
    return _operand(r2, DT, UPCAST)


@triton.jit
def _one_hot(rows, cols, BLOCK_R: tl.constexpr):
    """(len(rows), 2 BLOCK_R) float32: 1 at [i, rows[i]] and [i, BLOCK_R + cols[i]]."""
    r = tl.arange(0, 2 * BLOCK_R)[None, :]
    hit = tl.where(r < BLOCK_R, rows[:, None] == r, cols[:, None] == r - BLOCK_R)
    return hit.to(tl.float32)


@triton.jit
def _shift(table, row_shift, col_shift, K, BLOCK_R: tl.constexpr):
    """out[i, r] = table[i, r - row_shift[i]] for r < BLOCK_R and table[i, BLOCK_R + (r - BLOCK_R)
    - col_shift[i]] beyond, where that offset is in [0, K); 0 elsewhere. table (n, 2 BLOCK_R)."""
    r = tl.arange(0, 2 * BLOCK_R)[None, :]
    is_row = r < BLOCK_R
    offset = tl.where(is_row, r - row_shift[:, None], r - BLOCK_R - col_shift[:, None])
    valid = (offset >= 0) & (offset < K)
    source = tl.where(is_row, 0, BLOCK_R) + tl.where(valid, offset, 0)
    return tl.where(valid, tl.gather(table, source, axis=1), 0.0)


@triton.jit
def _query_logits(q, keys, r2, local_row, local_col, halo_row, halo_col, has_keys, has_rel,
                  ACC: tl.constexpr, DT: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr,
                  UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_HALO: tl.constexpr, K, BLOCK_R: tl.constexpr):
    """S (BLOCK_M x BLOCK_HALO): q.k + q.r of a tile's queries against its halo, unmasked."""
    logits = tl.zeros([BLOCK_M, BLOCK_HALO], dtype=ACC)
    if has_keys:
        logits = tl.dot(q, tl.trans(keys), logits, input_precision=PRECISION)
    if has_rel:
        per_offset = tl.dot(q, tl.trans(r2), input_precision=PRECISION, out_dtype=ACC)
        shifted = _shift(per_offset, local_row, local_col, K, BLOCK_R)
        one_hot = _operand(_one_hot(halo_row, halo_col, BLOCK_R), DT, UPCAST)
        logits = _dot_precise_a(shifted, tl.trans(one_hot), logits, DT, SPLIT, PRECISION, UPCAST)
    return logits


@triton.jit
def _window(local_row, local_col, halo_row, halo_col, real, key_inside, K, mask):
    """(tile, halo) pairs where the halo key is in the query's window (and in the image with mask)."""
    a = halo_row[None, :] - local_row[:, None]
    c = halo_col[None, :] - local_col[:, None]
    valid = (a >= 0) & (a < K) & (c >= 0) & (c < K) & real[None, :]
    if mask:
        valid = valid & key_inside[None, :]
    return valid


# The sizes and flags are not specialised on (Triton would compile a variant for every value
# that is 1 or a multiple of 16): one compiled kernel per dtype and block shape serves every layer.
SCALARS = ["N", "H", "W", "D", "HALF", "K", "tiles_h", "tiles_w", "has_keys", "has_rel", "mask"]
STRIDES = ["qkv_b", "qkv_n", "qkv_h", "qkv_w", "out_b", "out_n", "out_h", "out_w", "dq_b", "dq_n", "dq_h", "dq_w"]


@triton.jit(do_not_specialize=SCALARS + STRIDES[:8])
def forward_kernel(
    q_ptr, k_ptr, v_ptr, rows_ptr, cols_ptr, out_ptr, lse_ptr,
    qkv_b, qkv_n, qkv_h, qkv_w, out_b, out_n, out_h, out_w,
    N, H, W, D, HALF, K, tiles_h, tiles_w, has_keys, has_rel, mask,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_HALO: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr, SPLIT: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    # One grid axis (2^31 programs), tiles of one (image, head) adjacent so that their halos
    # meet in L2.
    tile = tl.program_id(0) % (tiles_h * tiles_w)
    image_head = tl.program_id(0) // (tiles_h * tiles_w)
    image = (image_head // N).to(tl.int64)
    head = image_head % N
    row0 = (tile // tiles_w) * TILE_H
    col0 = (tile % tiles_w) * TILE_W
    local_row, local_col, rows, cols, inside = _tile(row0, col0, H, W, TILE_H, TILE_W, BLOCK_M)
    halo_row, halo_col, key_rows, key_cols, real, key_inside = _halo(row0, col0, H, W, K, TILE_H, TILE_W, BLOCK_HALO)
    base = image * qkv_b + head * qkv_n
    q = _operand(_load(q_ptr, base, rows, cols, inside, qkv_h, qkv_w, D, BLOCK_D), DT, UPCAST)
    keys = tl.zeros([BLOCK_HALO, BLOCK_D], dtype=DT)
    if has_keys:
        keys = _load(k_ptr, base, key_rows, key_cols, key_inside, qkv_h, qkv_w, D, BLOCK_D)
    keys = _operand(keys, DT, UPCAST)
    r2 = _relative(rows_ptr, cols_ptr, head, K, HALF, D, has_rel, DT, UPCAST, BLOCK_R, BLOCK_D)
    logits = _query_logits(q, keys, r2, local_row, local_col, halo_row, halo_col, has_keys, has_rel, ACC, DT, SPLIT,
                           PRECISION, UPCAST, BLOCK_M, BLOCK_HALO, K, BLOCK_R)
    valid = _window(local_row, local_col, halo_row, halo_col, real, key_inside, K, mask)
    logits = tl.where(valid, logits * LOG2E, float("-inf"))
    maximum = tl.max(logits, axis=1)
    maximum = tl.where(maximum == float("-inf"), 0.0, maximum)  # rows of the block beyond the tile
    weights = tl.exp2(logits - maximum[:, None])
    total = tl.sum(weights, axis=1)
    total = tl.where(total == 0.0, 1.0, total)
    values = _operand(_load(v_ptr, base, key_rows, key_cols, key_inside, qkv_h, qkv_w, D, BLOCK_D), DT, UPCAST)
    out = tl.dot(_operand(weights, DT, UPCAST), values, input_precision=PRECISION, out_dtype=ACC) / total[:, None]
    _store(out_ptr, image * out_b + head * out_n, rows, cols, inside, out_h, out_w, D, out, BLOCK_D)
    lse = maximum + tl.log2(total)
    tl.store(lse_ptr + image_head.to(tl.int64) * H * W + rows * W + cols, lse, mask=inside)


@triton.jit(do_not_specialize=SCALARS + STRIDES)
def backward_query_kernel(
    grad_out_ptr, q_ptr, k_ptr, v_ptr, rows_ptr, cols_ptr, lse_ptr, grad_q_ptr, delta_ptr, grad_rel_ptr,
    qkv_b, qkv_n, qkv_h, qkv_w, out_b, out_n, out_h, out_w, dq_b, dq_n, dq_h, dq_w,
    N, H, W, D, HALF, K, tiles_h, tiles_w, has_keys, has_rel, mask,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_HALO: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr, SPLIT: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """dq and delta per pixel of a row of tiles; the embeddings' gradients of the row at
    grad_rel[image, head, tile_row] (K x D: row offsets on the first half of the channels,
    column offsets on the second)."""
    tile_row = tl.program_id(0) % tiles_h
    image_head = tl.program_id(0) // tiles_h
    image = (image_head // N).to(tl.int64)
    head = image_head % N
    base = image * qkv_b + head * qkv_n
    r2 = _relative(rows_ptr, cols_ptr, head, K, HALF, D, has_rel, DT, UPCAST, BLOCK_R, BLOCK_D)
    grad_r2 = tl.zeros([2 * BLOCK_R, BLOCK_D], dtype=ACC)
    row0 = tile_row * TILE_H
    for tile_col in range(tiles_w):
        col0 = tile_col * TILE_W
        local_row, local_col, rows, cols, inside = _tile(row0, col0, H, W, TILE_H, TILE_W, BLOCK_M)
        halo_row, halo_col, key_rows, key_cols, real, key_inside = _halo(row0, col0, H, W, K, TILE_H, TILE_W,
                                                                         BLOCK_HALO)
        q = _operand(_load(q_ptr, base, rows, cols, inside, qkv_h, qkv_w, D, BLOCK_D), DT, UPCAST)
        keys = tl.zeros([BLOCK_HALO, BLOCK_D], dtype=DT)
        if has_keys:
            keys = _load(k_ptr, base, key_rows, key_cols, key_inside, qkv_h, qkv_w, D, BLOCK_D)
        keys = _operand(keys, DT, UPCAST)
        logits = _query_logits(q, keys, r2, local_row, local_col, halo_row, halo_col, has_keys, has_rel, ACC, DT,
                               SPLIT, PRECISION, UPCAST, BLOCK_M, BLOCK_HALO, K, BLOCK_R)
        valid = _window(local_row, local_col, halo_row, halo_col, real, key_inside, K, mask) & inside[:, None]
        pixels = image_head.to(tl.int64) * H * W + rows * W + cols
        lse = tl.load(lse_ptr + pixels, mask=inside, other=0.0)
        weights = tl.where(valid, tl.exp2(logits * LOG2E - lse[:, None]), 0.0)
        grad_out = _operand(_load(grad_out_ptr, image * out_b + head * out_n, rows, cols, inside, out_h, out_w, D,
                                  BLOCK_D), DT, UPCAST)
        values = _operand(_load(v_ptr, base, key_rows, key_cols, key_inside, qkv_h, qkv_w, D, BLOCK_D), DT, UPCAST)
        grad_weights = tl.dot(grad_out, tl.trans(values), input_precision=PRECISION, out_dtype=ACC)
        delta = tl.sum(weights * grad_weights, axis=1)
        grad_logits = weights * (grad_weights - delta[:, None])
        grad_q = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
        if has_keys:
            grad_q = tl.dot(_operand(grad_logits, DT, UPCAST), keys, grad_q, input_precision=PRECISION)
        if has_rel:
            one_hot = _operand(_one_hot(halo_row, halo_col, BLOCK_R), DT, UPCAST)
            per_line = _dot_precise_a(grad_logits, one_hot, tl.zeros([BLOCK_M, 2 * BLOCK_R], dtype=ACC), DT, SPLIT,
                                      PRECISION, UPCAST)
            # Back from halo rows and columns to window offsets: offset a sits at halo row a + row.
            r = tl.arange(0, 2 * BLOCK_R)[None, :]
            is_row = r < BLOCK_R
            offset = tl.where(is_row, r, r - BLOCK_R)
            source = offset + tl.where(is_row, local_row[:, None], BLOCK_R + local_col[:, None])
            per_offset = tl.where(offset < K, tl.gather(per_line, tl.minimum(source, 2 * BLOCK_R - 1), axis=1), 0.0)
            grad_q = _dot_precise_a(per_offset, r2, grad_q, DT, SPLIT, PRECISION, UPCAST)
            grad_r2 = _dot_precise_a(tl.trans(per_offset), q, grad_r2, DT, SPLIT, PRECISION, UPCAST)
        _store(grad_q_ptr, image * dq_b + head * dq_n, rows, cols, inside, dq_h, dq_w, D, grad_q, BLOCK_D)
        tl.store(delta_ptr + pixels, delta, mask=inside)
    if has_rel:
        r = tl.arange(0, 2 * BLOCK_R)[:, None]
        d = tl.arange(0, BLOCK_D)[None, :]
        partial = grad_rel_ptr + (image_head.to(tl.int64) * tiles_h + tile_row) * K * D
        # Rows: offsets a < K on channels < HALF; columns: rows BLOCK_R + c, channels HALF..D.
        offset = tl.where(r < BLOCK_R, r, r - BLOCK_R)
        in_rows = (r < BLOCK_R) & (d < HALF)
        in_cols = (r >= BLOCK_R) & (d >= HALF) & (d < D)
        tl.store(partial + offset * D + d, grad_r2, mask=(offset < K) & (in_rows | in_cols))


@triton.jit(do_not_specialize=SCALARS[:-1] + STRIDES[:8])
def backward_key_kernel(
    grad_out_ptr, q_ptr, k_ptr, v_ptr, rows_ptr, cols_ptr, lse_ptr, delta_ptr, grad_k_ptr, grad_v_ptr,
    qkv_b, qkv_n, qkv_h, qkv_w, out_b, out_n, out_h, out_w,
    N, H, W, D, HALF, K, tiles_h, tiles_w, has_keys, has_rel,
    TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_HALO: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, DT: tl.constexpr, ACC: tl.constexpr, SPLIT: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    """dk and dv of a tile of key pixels, from the halo of queries whose windows hold them.
    grad_k and grad_v have q's strides (the layer passes k and v themselves: this program reads
    only its own tile's keys and values, before it writes their gradients).

    A key inside the image is never masked, so the mask flag plays no part here; neighbours
    outside the image (zero padding) are not keys anyone receives a gradient for."""
    # One grid axis (2^31 programs), tiles of one (image, head) adjacent so that their halos
    # meet in L2.
    tile = tl.program_id(0) % (tiles_h * tiles_w)
    image_head = tl.program_id(0) // (tiles_h * tiles_w)
    image = (image_head // N).to(tl.int64)
    head = image_head % N
    row0 = (tile // tiles_w) * TILE_H
    col0 = (tile % tiles_w) * TILE_W
    local_row, local_col, rows, cols, inside = _tile(row0, col0, H, W, TILE_H, TILE_W, BLOCK_M)
    halo_row, halo_col, query_rows, query_cols, real, query_inside = _halo(row0, col0, H, W, K, TILE_H, TILE_W,
                                                                           BLOCK_HALO)
    base = image * qkv_b + head * qkv_n
    queries = _operand(_load(q_ptr, base, query_rows, query_cols, query_inside, qkv_h, qkv_w, D, BLOCK_D), DT, UPCAST)
    keys = tl.zeros([BLOCK_M, BLOCK_D], dtype=DT)
    if has_keys:
        keys = _load(k_ptr, base, rows, cols, inside, qkv_h, qkv_w, D, BLOCK_D)
    keys = _operand(keys, DT, UPCAST)
    values = _operand(_load(v_ptr, base, rows, cols, inside, qkv_h, qkv_w, D, BLOCK_D), DT, UPCAST)

    logits = tl.zeros([BLOCK_M, BLOCK_HALO], dtype=ACC)
    if has_keys:
        logits = tl.dot(keys, tl.trans(queries), logits, input_precision=PRECISION)
    # Key row t and query halo row h: the key is at offset a = t - h + 2 (K // 2) of the query's window.
    radius2 = 2 * (K // 2)
    if has_rel:
        r2 = _relative(rows_ptr, cols_ptr, head, K, HALF, D, has_rel, DT, UPCAST, BLOCK_R, BLOCK_D)
        per_offset = tl.dot(queries, tl.trans(r2), input_precision=PRECISION, out_dtype=ACC)
        shifted = _shift(per_offset, halo_row - radius2, halo_col - radius2, K, BLOCK_R)
        one_hot = _operand(_one_hot(local_row, local_col, BLOCK_R), DT, UPCAST)
        logits = _dot_precise_b(one_hot, tl.trans(shifted), logits, DT, SPLIT, PRECISION, UPCAST)
    a = local_row[:, None] - halo_row[None, :] + radius2
    c = local_col[:, None] - halo_col[None, :] + radius2
    valid = (a >= 0) & (a < K) & (c >= 0) & (c < K) & inside[:, None] & query_inside[None, :]
    query_pixels = image_head.to(tl.int64) * H * W + query_rows * W + query_cols
    lse = tl.load(lse_ptr + query_pixels, mask=query_inside, other=0.0)
    weights = tl.where(valid, tl.exp2(logits * LOG2E - lse[None, :]), 0.0)
    grad_out = _operand(_load(grad_out_ptr, image * out_b + head * out_n, query_rows, query_cols, query_inside, out_h,
                              out_w, D, BLOCK_D), DT, UPCAST)
    grad_v = tl.dot(_operand(weights, DT, UPCAST), grad_out, input_precision=PRECISION, out_dtype=ACC)
    if has_keys:
        delta = tl.load(delta_ptr + query_pixels, mask=query_inside, other=0.0)
        grad_weights = tl.dot(values, tl.trans(grad_out), input_precision=PRECISION, out_dtype=ACC)
        grad_logits = weights * (grad_weights - delta[None, :])
        grad_k = tl.dot(_operand(grad_logits, DT, UPCAST), queries, input_precision=PRECISION, out_dtype=ACC)
        _store(grad_k_ptr, base, rows, cols, inside, qkv_h, qkv_w, D, grad_k, BLOCK_D)
    _store(grad_v_ptr, base, rows, cols, inside, qkv_h, qkv_w, D, grad_v, BLOCK_D)
