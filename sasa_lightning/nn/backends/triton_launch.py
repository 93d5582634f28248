"""Launching the triton backend's kernels (triton_kernels.py): their tile shapes, the variants a
launch can compile, ahead-of-time compilation for a GPU that need not be here, and the launchers.

The launchers take pixel tensors as (B, N, H, W, D) views with the channel stride 1 (any other
strides: slices of a channels-last projection, or per-head channels-last copies), embeddings
(N, K, D/2), lse and delta (B, N, H, W) contiguous in the accumulator's dtype.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from .errors import KernelFailed

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 64
# The largest window per input dtype: a block holds a tile's halo, and the halo's float32 and
# float64 operands outgrow the 227 KiB of shared memory an H100/H200 block may use at k = 13 and
# k = 9 (k = 15: 262 KiB in float32; k = 11: 368 KiB in float64 at head dim 64).
MAX_KERNEL_SIZE = {torch.float16: 15, torch.bfloat16: 15, torch.float32: 11, torch.float64: 7}
KERNELS = ("forward_kernel", "backward_query_kernel", "backward_key_kernel")

# Query tile (rows, columns) per window size: the halo, (rows + k - 1) x (columns + k - 1), fills
# its power-of-two block as far as the shapes allow, so that few of the pairs the tensor cores
# compute fall outside every window (k = 7: 2 x 8 queries, a halo of 8 x 14 in a block of 128,
# 38 % of the pairs in a window; k = 5: 4 x 4 and 8 x 8 in 64, 39 %), and the halo block stays
# at 128 or 256 keys: at 256 the backward kernels spill a few hundred bytes of registers, at 512
# (k = 15 with 2 x 8) thousands, so k = 9 takes 2 x 4 (a halo of 10 x 12 in 128) and k = 15
# 2 x 2 (16 x 16), their query blocks padded to 16 (benchmarks/results/triton-compile-sm90.json).
# Chosen from the compiled code's resources; benchmarks/triton_tiles.py times them on a GPU.
TILES = {1: (4, 4), 3: (4, 8), 5: (4, 4), 7: (2, 8), 9: (2, 4), 11: (2, 8), 13: (4, 4), 15: (2, 2)}
# Warps per program, by the block of queries: a warp's tensor-core tile is 16 rows.
WARPS = {16: 8, 32: 8, 64: 8}


def interpreting() -> bool:
    """Triton's interpreter is on: the kernels run on CPU tensors (slowly, for tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def kernels():
    try:
        from . import triton_kernels
    except ImportError as error:  # no triton installed (torch's CPU wheels come without it)
        raise KernelFailed(f"the triton backend needs triton: {error}") from error
    return triton_kernels


def _power_of_two(n: int, at_least: int) -> int:
    return max(at_least, 1 << (n - 1).bit_length())


def launch_config(head_dim: int, kernel_size: int, tile: tuple[int, int, int] | None = None) -> dict:
    """The compile-time constants of a launch (blocks of at least 16: the tensor cores' tiles) and
    its warps; `tile` (rows, columns, warps) overrides TILES and WARPS (benchmarks/triton_tiles.py
    compares them)."""
    tile_h, tile_w = TILES[kernel_size] if tile is None else tile[:2]
    halo_h, halo_w = tile_h + kernel_size - 1, tile_w + kernel_size - 1
    block_m = _power_of_two(tile_h * tile_w, 16)
    return {"TILE_H": tile_h, "TILE_W": tile_w, "BLOCK_M": block_m, "BLOCK_HALO": _power_of_two(halo_h * halo_w, 16),
            "BLOCK_R": _power_of_two(max(halo_h, halo_w), 16), "BLOCK_D": _power_of_two(head_dim, 16),
            "num_warps": WARPS[block_m] if tile is None else tile[2]}


def launch_configs(dtype: torch.dtype) -> list[dict]:
    """Every distinct launch_config the backend can use for inputs of dtype (head dims up to 64,
    odd windows up to MAX_KERNEL_SIZE)."""
    configs = {tuple(launch_config(dim, size).items()) for dim in range(1, MAX_HEAD_DIM + 1)
               for size in range(1, MAX_KERNEL_SIZE[dtype] + 1, 2)}
    return [dict(config) for config in sorted(configs)]


_TYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _signature(kernel: str, dtype: torch.dtype) -> dict:
    """The argument types the launchers below pass to a kernel for inputs of dtype."""
    data = "*" + _TYPE_NAMES[dtype]
    acc = "*" + _TYPE_NAMES[accumulator(dtype)]
    inputs = {"q_ptr": data, "k_ptr": data, "v_ptr": data, "rows_ptr": data, "cols_ptr": data}
    strides = {f"{group}_{axis}": "i32" for group in ("qkv", "out") for axis in "bnhw"}
    sizes = {name: "i32" for name in ("N", "H", "W", "D", "HALF", "K", "tiles_h", "tiles_w", "has_keys", "has_rel")}
    return {
        "forward_kernel": {**inputs, "out_ptr": data, "lse_ptr": acc, **strides, **sizes, "mask": "i32"},
        "backward_query_kernel": {"grad_out_ptr": data, **inputs, "lse_ptr": acc, "grad_q_ptr": data,
                                  "delta_ptr": acc, "grad_rel_ptr": acc, **strides,
                                  **{f"dq_{axis}": "i32" for axis in "bnhw"}, **sizes, "mask": "i32"},
        "backward_key_kernel": {"grad_out_ptr": data, **inputs, "lse_ptr": acc, "delta_ptr": acc, "grad_k_ptr": data,
                                "grad_v_ptr": data, **strides, **sizes},
    }[kernel]


def _constants(dtype: torch.dtype, config: dict, upcast: bool = False) -> dict:
    """The kernels' constexprs for inputs of dtype: blocks, the accumulator, and how the products
    keep precision (DT: the inputs' dtype; bf16/fp16: split float32 operands; float32: three TF32 products, about
    float32's precision; float64: exact)."""
    import triton.language as tl

    blocks = {key: value for key, value in config.items() if key != "num_warps"}
    data = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
            torch.float64: tl.float64}[dtype]
    return {**blocks, "DT": data, "ACC": tl.float64 if dtype == torch.float64 else tl.float32,
            "SPLIT": dtype in (torch.float16, torch.bfloat16),
            "PRECISION": {torch.float32: "tf32x3", torch.float64: "ieee"}.get(dtype, "ieee"), "UPCAST": upcast}


def kernel_variants() -> list[tuple[str, torch.dtype, dict]]:
    """(kernel, input dtype, launch config) of every compiled kernel a launch can ask for."""
    return [(kernel, dtype, config) for dtype in DTYPES for config in launch_configs(dtype) for kernel in KERNELS]


def compile_variant(kernel: str, dtype: torch.dtype, config: dict, target):
    """Compile one kernel variant ahead of time for a GPUTarget (a GPU that need not be here), with
    the argument types and pointer alignment (16 bytes, as torch allocates) a launch gives it."""
    import triton
    from triton.compiler import ASTSource

    constants = _constants(dtype, config)
    signature = _signature(kernel, dtype) | {key: "constexpr" for key in constants}
    attrs = {(index,): [["tt.divisibility", 16]] for index, kind in enumerate(signature.values()) if kind.startswith("*")}
    source = ASTSource(fn=getattr(kernels(), kernel), signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=target, options={"num_warps": config["num_warps"], "num_stages": 1})


def _compiling(name: str, work):
    """work(), where a kernel that does not compile or does not fit the GPU is a KernelFailed,
    which "auto" falls back from."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError

    try:
        return work()
    except (CompilationError, OutOfResources, PTXASError) as error:
        raise KernelFailed(f"the triton kernel {name} did not compile: {str(error).splitlines()[0]}") from error


# The (device, dtype, launch config) whose backward kernels have been compiled in this process.
_COMPILED: set = set()


def _compile_backward_on_first_use(q: Tensor, launch: "_Launch", kernel_size: int) -> None:
    """Compile the backward kernels of a variant on its first forward, where a failure can still
    fall back to another backend (in backward it could not): a backward of one pixel of one head,
    which Triton compiles exactly as it will run (the sizes and strides are not specialised on)."""
    key = (q.device, q.dtype, *launch.config.items())
    if key in _COMPILED or interpreting():
        return
    one = q.new_zeros((1, 1, 1, 1, q.shape[-1]))
    rel = q.new_zeros((1, kernel_size, q.shape[-1] // 2))
    lse = q.new_zeros((1, 1, 1, 1), dtype=accumulator(q.dtype))
    backward(one, one, one, one, rel, rel, lse, one.clone(), one.clone(), one.clone(), kernel_size, False,
             launch.tile)
    _COMPILED.add(key)


def _pixel_strides(t: Tensor) -> tuple[int, int, int, int]:
    assert t.dim() == 5 and t.stride(4) == 1, "the kernels read channels at stride 1"
    return t.stride(0), t.stride(1), t.stride(2), t.stride(3)


class _Launch:
    """What every kernel of one call shares: the grid's sizes, the constants, the flags."""

    def __init__(self, q: Tensor, k: Tensor | None, rel_rows: Tensor | None, kernel_size: int, mask: bool,
                 tile: tuple[int, int, int] | None = None) -> None:
        batch, heads, height, width, dim = q.shape
        self.config = launch_config(dim, kernel_size, tile)
        self.tile = (self.config["TILE_H"], self.config["TILE_W"], self.config["num_warps"])
        self.tiles_h = -(-height // self.config["TILE_H"])
        self.tiles_w = -(-width // self.config["TILE_W"])
        self.image_heads = batch * heads
        self.has_keys, self.has_rel = k is not None, rel_rows is not None
        self.sizes = (heads, height, width, dim, dim // 2, kernel_size, self.tiles_h, self.tiles_w,
                      int(self.has_keys), int(self.has_rel))
        self.mask = int(mask)
        upcast = interpreting() and q.dtype == torch.bfloat16
        self.constants = _constants(q.dtype, self.config, upcast) | {"num_warps": self.config["num_warps"],
                                                                      "num_stages": 1}

    def run(self, kernel, programs: int, *args) -> None:
        _compiling(kernel.__name__, lambda: kernel[(programs,)](*args, **self.constants))


def forward(q: Tensor, k: Tensor | None, v: Tensor, rel_rows: Tensor | None, rel_cols: Tensor | None, out: Tensor,
            lse: Tensor, kernel_size: int, mask: bool, tile: tuple[int, int, int] | None = None) -> None:
    """Writes out (B, N, H, W, D) and lse (B, N, H, W); k or the embeddings may be None."""
    launch = _Launch(q, k, rel_rows, kernel_size, mask, tile)
    _compile_backward_on_first_use(q, launch, kernel_size)
    launch.run(kernels().forward_kernel, launch.tiles_h * launch.tiles_w * launch.image_heads,
               q, q if k is None else k, v, q if rel_rows is None else rel_rows, q if rel_cols is None else rel_cols,
               out, lse, *_pixel_strides(q), *_pixel_strides(out), *launch.sizes, launch.mask)


def backward(grad_out: Tensor, q: Tensor, k: Tensor | None, v: Tensor, rel_rows: Tensor | None,
             rel_cols: Tensor | None, lse: Tensor, grad_q: Tensor, grad_k: Tensor | None, grad_v: Tensor,
             kernel_size: int, mask: bool, tile: tuple[int, int, int] | None = None) -> tuple[Tensor, Tensor] | None:
    """Writes grad_q, grad_k and grad_v (which must have q's strides, and may be k and v
    themselves); returns the embeddings' gradients (in the accumulator's dtype), None without them."""
    launch = _Launch(q, k, rel_rows, kernel_size, mask, tile)
    batch, heads, height, width, dim = q.shape
    acc = accumulator(q.dtype)
    delta = torch.empty_like(lse)
    partial = q.new_empty((batch, heads, launch.tiles_h, kernel_size, dim) if launch.has_rel else (0,), dtype=acc)
    inputs = (q, q if k is None else k, v, q if rel_rows is None else rel_rows, q if rel_cols is None else rel_cols,
              lse)
    strides = (*_pixel_strides(q), *_pixel_strides(grad_out))
    launch.run(kernels().backward_query_kernel, launch.tiles_h * launch.image_heads, grad_out, *inputs, grad_q, delta,
               partial if launch.has_rel else lse, *strides, *_pixel_strides(grad_q), *launch.sizes, launch.mask)
    # The key pass reads k and v only at its own tile, and only after the query pass has finished.
    if grad_k is not None:
        assert grad_k.stride() == q.stride()
    assert grad_v.stride() == q.stride()
    launch.run(kernels().backward_key_kernel, launch.tiles_h * launch.tiles_w * launch.image_heads, grad_out, *inputs,
               delta, grad_v if grad_k is None else grad_k, grad_v, *strides, *launch.sizes)
    if not launch.has_rel:
        return None
    return partial[..., : dim // 2].sum((0, 2)), partial[..., dim // 2:].sum((0, 2))
