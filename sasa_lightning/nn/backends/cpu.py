"""Local attention on the CPU with a C++ kernel (cpu_kernel.cpp): no k^2-expanded tensor at all.

The kernel is compiled on first use with torch's extension builder (about 30 s on 2 cores; it is
cached under ~/.cache/torch_extensions, one build per CPU type since it targets the CPU it runs
on). The autograd around it (what is kept, the layer's chunks and recomputed projections) is
fused.py's, shared with the compiled and triton backends.
"""

from __future__ import annotations

import functools
import hashlib
import platform
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from . import custom_ops, fused
from .call import Call
from .errors import KernelFailed


SOURCE = Path(__file__).with_name("cpu_kernel.cpp")


def _cpu_identity() -> str:
    """What the build depends on besides its source: the CPU's instruction sets and torch."""
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        flags = next((line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), "")
    return f"{platform.machine()} {flags} {torch.__version__}"


@functools.cache
def extension() -> ModuleType:
    import logging

    # Importing the builder on a machine without a GPU logs that it found no CUDA runtime; this
    # build needs none, so that line would only alarm.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils.cpp_extension import load

    source = SOURCE.read_text()
    digest = hashlib.sha256((source + _cpu_identity()).encode()).hexdigest()[:12]
    flags = ["-O3", "-march=native", "-fopenmp"]
    try:
        return load(f"sasa_cpu_attention_{digest}", [str(SOURCE)], extra_cflags=flags, extra_ldflags=["-fopenmp"])
    except (RuntimeError, OSError) as error:  # no compiler, or the build failed
        raise KernelFailed(f"the cpu backend's kernel did not build: {str(error).splitlines()[0]}") from error


@functools.cache
def kernel() -> fused.Kernel:
    built = extension()
    return fused.Kernel(forward=built.forward, backward=built.backward)


def can_run(call: Call) -> str | None:
    if call.device.type != "cpu":
        return f"the cpu backend runs on CPU tensors, not {call.device.type}; use backend 'auto' there"
    return None


custom_ops.register_kernel("cpu", kernel)

def local_attention(*, q, k, v, rel_rows, rel_cols, kernel_size: int, padding: str) -> Tensor:
    return custom_ops.local_attention("cpu", q=q, k=k, v=v, rel_rows=rel_rows, rel_cols=rel_cols,
                                      kernel_size=kernel_size, padding=padding)


def local_self_attention(
    *, x, query_weight, key_weight, value_weight, rel_rows, rel_cols, kernel_size: int, heads: int, key_bias, padding: str
) -> Tensor:
    return custom_ops.local_self_attention(
        "cpu", x=x, query_weight=query_weight, key_weight=key_weight, value_weight=value_weight, rel_rows=rel_rows,
        rel_cols=rel_cols, kernel_size=kernel_size, heads=heads, key_bias=key_bias, padding=padding)
