"""Local attention with fused Triton kernels (triton_kernels.py): the CUDA backend.

The kernels take q, k, v in float16, bfloat16, float32 or float64 as they come and accumulate in
float32 (float64 for float64); the output and the gradients of q, k and v come back in the
inputs' dtype, the log-sum-exp and the embeddings' gradients in the accumulator's. The autograd
around them, and the layer's chunks with recomputed projections, are fused.py's, as for the cpu
and compiled backends.

Without a GPU the same kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before
Triton is imported), on CPU tensors: that is how the tests check them against the reference.
"""

from __future__ import annotations

import functools
import os

import torch
from torch import Tensor

from . import custom_ops, fused
from .call import Call
from .errors import BackendUnavailable, KernelFailed

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 64
MAX_KERNEL_SIZE = 15  # the embeddings' gradient block holds 16 offsets


def interpreting() -> bool:
    """Triton's interpreter is on: the kernels run on CPU tensors (slowly, for tests)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernels():
    try:
        from . import triton_kernels
    except ImportError as error:  # no triton installed (torch's CPU wheels come without it)
        raise KernelFailed(f"the triton backend needs triton: {error}") from error
    return triton_kernels


def can_run(call: Call) -> str | None:
    if call.device.type != "cuda" and not (call.device.type == "cpu" and interpreting()):
        return f"the triton backend runs on CUDA tensors, not {call.device.type} (on CPU only under TRITON_INTERPRET=1)"
    if call.dtype not in DTYPES:
        return f"the triton backend takes {', '.join(str(d) for d in DTYPES)}, not {call.dtype}"
    if call.head_dim > MAX_HEAD_DIM:
        return f"the triton backend takes head dims up to {MAX_HEAD_DIM}, not {call.head_dim}"
    if call.kernel_size > MAX_KERNEL_SIZE:
        return f"the triton backend takes windows up to {MAX_KERNEL_SIZE}, not {call.kernel_size}"
    return None


def _power_of_two(n: int, at_least: int) -> int:
    return max(at_least, 1 << (n - 1).bit_length())


# Pixels x channels of a tile's blocks: 8 values per thread of a program's 4 warps. Every block
# the kernels hold (q, a key or value block, their addresses, the accumulators) is that size, and
# larger tiles spill registers in the backward query kernel (benchmarks/triton_compile.py).
TILE_ELEMENTS = 1024


def launch_config(head_dim: int, kernel_size: int) -> dict:
    """Compile-time constants of a launch: the channel block, the tile (8 pixels wide, as many
    rows as TILE_ELEMENTS allows, at most 8) and the embeddings' offset block."""
    block_d = _power_of_two(head_dim, 8)
    return {"BLOCK_D": block_d, "TILE_H": min(8, TILE_ELEMENTS // (8 * block_d)), "TILE_W": 8,
            "BLOCK_K": _power_of_two(kernel_size, 4)}


def launch_configs() -> list[dict]:
    """Every distinct launch_config the backend can use (head dims up to 64, odd windows up to 15)."""
    configs = {tuple(launch_config(dim, size).items()) for dim in range(1, MAX_HEAD_DIM + 1)
               for size in range(1, MAX_KERNEL_SIZE + 1, 2)}
    return [dict(config) for config in sorted(configs)]


KERNELS = ("forward_kernel", "backward_query_kernel", "backward_key_kernel")
_TYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


def _signature(kernel: str, dtype: torch.dtype) -> dict:
    """The argument types the launchers below pass to a kernel for inputs of dtype."""
    data = "*" + _TYPE_NAMES[dtype]
    acc = "*fp64" if dtype == torch.float64 else "*fp32"
    inputs = {"q_ptr": data, "k_ptr": data, "v_ptr": data, "rows_ptr": data, "cols_ptr": data}
    scalars = {name: "i32" for name in ("N", "H", "W", "D", "HALF", "K", "tiles_w", "has_keys", "has_rel")}
    return {
        "forward_kernel": {**inputs, "out_ptr": data, "lse_ptr": acc, **scalars, "mask": "i32"},
        "backward_query_kernel": {"grad_out_ptr": data, **inputs, "lse_ptr": acc, "grad_q_ptr": data,
                                  "delta_ptr": acc, "grad_rows_ptr": acc, "grad_cols_ptr": acc, **scalars, "mask": "i32"},
        "backward_key_kernel": {"grad_out_ptr": data, **inputs, "lse_ptr": acc, "delta_ptr": acc, "grad_k_ptr": data,
                                "grad_v_ptr": data, **scalars},
    }[kernel]


def _constants(kernel: str, config: dict) -> dict:
    used = ("TILE_H", "TILE_W", "BLOCK_D") + (("BLOCK_K",) if kernel == "backward_query_kernel" else ())
    return {key: config[key] for key in used}


def kernel_variants() -> list[tuple[str, torch.dtype, dict]]:
    """(kernel, input dtype, launch config) of every compiled kernel a launch can ask for."""
    variants = {}
    for dtype in DTYPES:
        for config in launch_configs():
            for kernel in KERNELS:
                variants[(kernel, dtype, *_constants(kernel, config).items())] = (kernel, dtype, config)
    return list(variants.values())


def compile_variant(kernel: str, dtype: torch.dtype, config: dict, target):
    """Compile one kernel variant ahead of time for a GPUTarget (a GPU that need not be here), with
    the argument types and pointer alignment (16 bytes, as torch allocates) a launch gives it."""
    import triton
    import triton.language as tl
    from triton.compiler import ASTSource

    constants = _constants(kernel, config) | {"ACC": tl.float64 if dtype == torch.float64 else tl.float32}
    signature = _signature(kernel, dtype) | {key: "constexpr" for key in constants}
    attrs = {(index,): [["tt.divisibility", 16]] for index, kind in enumerate(signature.values()) if kind.startswith("*")}
    source = ASTSource(fn=getattr(_kernels(), kernel), signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(source, target=target)


def accumulator(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _triton_dtype(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _grid(q: Tensor, config: dict) -> tuple[tuple[int, int], int]:
    batch, heads, _, height, width = q.shape
    tiles_w = -(-width // config["TILE_W"])
    return (-(-height // config["TILE_H"]) * tiles_w, batch * heads), tiles_w


def _sizes(q: Tensor, kernel_size: int, tiles_w: int) -> tuple[int, ...]:
    """The kernels' size arguments N, H, W, D, HALF, K, tiles_w."""
    _, heads, dim, height, width = q.shape
    return heads, height, width, dim, dim // 2, kernel_size, tiles_w


def _compiling(name: str, work):
    """work(), where a kernel that does not compile or does not fit the GPU is a KernelFailed,
    which "auto" falls back from."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources, PTXASError

    try:
        return work()
    except (CompilationError, OutOfResources, PTXASError) as error:
        raise KernelFailed(f"the triton kernel {name} did not compile: {str(error).splitlines()[0]}") from error


def _launch(kernel, grid, *args, **constants) -> None:
    """Run a kernel (compiled on its first launch with these constants)."""
    _compiling(kernel.__name__, lambda: kernel[grid](*args, **constants))


# The (device, dtype, launch config) whose kernels have been compiled in this process.
_COMPILED: set = set()


def _compile_on_first_use(q: Tensor, config: dict) -> None:
    """Compile the three kernels of a variant for this GPU on its first forward, where a failure can
    still fall back to another backend (in backward it could not). Under the interpreter there is
    nothing to compile."""
    key = (q.device, q.dtype, *config.items())
    if key in _COMPILED or interpreting():
        return
    from triton.runtime import driver

    for kernel in KERNELS:
        _compiling(kernel, lambda: compile_variant(kernel, q.dtype, config, driver.active.get_current_target()))
    _COMPILED.add(key)


def _check(q: Tensor, kernel_size: int) -> None:
    """The kernels' own guard, for calls that did not come through can_run."""
    reason = can_run(Call(q.device, q.dtype, q.shape[2], kernel_size, needs_grad=False))
    if reason:
        raise BackendUnavailable(reason)


def forward(q, k, v, rel_rows, rel_cols, kernel_size: int, has_keys: bool, has_rel: bool, mask: bool):
    """(out, lse), fused.py's kernel interface; absent k or embeddings are empty tensors."""
    _check(q, kernel_size)
    config = launch_config(q.shape[2], kernel_size)
    grid, tiles_w = _grid(q, config)
    out = torch.empty_like(q)
    lse = q.new_empty((q.shape[0], q.shape[1], *q.shape[3:]), dtype=accumulator(q.dtype))
    args = (q, k if has_keys else q, v, rel_rows if has_rel else q, rel_cols if has_rel else q, out, lse,
            *_sizes(q, kernel_size, tiles_w), int(has_keys), int(has_rel), int(mask))
    constants = {"TILE_H": config["TILE_H"], "TILE_W": config["TILE_W"], "BLOCK_D": config["BLOCK_D"],
                 "ACC": _triton_dtype(q.dtype)}
    _compile_on_first_use(q, config)
    _launch(_kernels().forward_kernel, grid, *args, **constants)
    return out, lse


def backward(grad_out, q, k, v, rel_rows, rel_cols, lse, kernel_size: int, has_keys: bool, has_rel: bool, mask: bool):
    """(grad_q, grad_k, grad_v, grad_rel_rows, grad_rel_cols); grad_k None without keys, the
    embeddings' None without them."""
    _check(q, kernel_size)
    kernels = _kernels()
    config = launch_config(q.shape[2], kernel_size)
    grid, tiles_w = _grid(q, config)
    batch, heads, dim = q.shape[:3]
    half = dim // 2
    acc = accumulator(q.dtype)
    grad_q = torch.empty_like(q)
    delta = torch.empty_like(lse)
    partial_shape = (batch, heads, grid[0], config["BLOCK_K"], config["BLOCK_D"])
    grad_rows, grad_cols = (q.new_empty(partial_shape if has_rel else (0,), dtype=acc) for _ in range(2))
    inputs = (q, k if has_keys else q, v, rel_rows if has_rel else q, rel_cols if has_rel else q, lse)
    sizes = _sizes(q, kernel_size, tiles_w)
    constants = {"TILE_H": config["TILE_H"], "TILE_W": config["TILE_W"], "BLOCK_D": config["BLOCK_D"],
                 "ACC": _triton_dtype(q.dtype)}
    _launch(kernels.backward_query_kernel, grid, grad_out, *inputs, grad_q, delta,
            grad_rows if has_rel else lse, grad_cols if has_rel else lse, *sizes, int(has_keys), int(has_rel),
            int(mask), BLOCK_K=config["BLOCK_K"], **constants)
    grad_k = torch.empty_like(q) if has_keys else None
    grad_v = torch.empty_like(v)
    _launch(kernels.backward_key_kernel, grid, grad_out, *inputs, delta, grad_k if has_keys else grad_v, grad_v,
            *sizes, int(has_keys), int(has_rel), **constants)
    if not has_rel:
        return grad_q, grad_k, grad_v, None, None
    # The tiles' partial sums; rows sit on the first half of the channels, columns on the second.
    rows = grad_rows.sum((0, 2))[:, :kernel_size, :half]
    cols = grad_cols.sum((0, 2))[:, :kernel_size, half:dim]
    return grad_q, grad_k, grad_v, rows, cols


KERNEL = fused.Kernel(forward=forward, backward=backward)
custom_ops.register_kernel("triton", lambda: KERNEL, DTYPES)

local_attention = functools.partial(custom_ops.local_attention, "triton")
local_self_attention = functools.partial(custom_ops.local_self_attention, "triton")
