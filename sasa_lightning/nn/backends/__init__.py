"""Implementations of local attention, one module each, all with the same interface:

- can_run(call: Call) -> str | None: None, or why it cannot run such a call here (device, dtype,
  gradients, head dim, kernel size). It builds and compiles nothing: a kernel that fails to build
  or compile on first use raises KernelFailed from the call itself.
- local_attention(*, q, k, v, rel_rows, rel_cols, kernel_size, padding)
- local_self_attention(*, x, query_weight, key_weight, value_weight, rel_rows, rel_cols,
  kernel_size, heads, key_bias, padding)

fused.py and custom_ops.py are not backends: fused.py computes around the fused kernels (cpu,
compiled, triton) and holds the CPU's chunked layer path, custom_ops.py makes that the
torch.library ops with their autograd, which those backends call. The triton backend's parts:
triton_kernels.py (the kernels), triton_launch.py (tiles, variants, launchers) and
triton_layer.py (its layer path for GPUs).
"""

from . import chunked, compiled, cpu, flex, reference, triton_attention
from .call import Call

BACKENDS = {
    "reference": reference, "chunked": chunked, "cpu": cpu, "compiled": compiled, "flex": flex,
    "triton": triton_attention,
}

# What "auto" tries, per device type, first to last; the last always runs. On CPU the C++ kernel
# (README, Performance: 3-8x faster than compiled, which compiles for minutes). On CUDA the fused
# Triton kernels on tensor cores; where they cannot run (head dims above 64, larger windows, no
# triton), flex: measured on an H200 at (64, 64, 56, 56) at 43 ms a forward+backward against
# chunked's 2.4 s (issue 23's table, before chunked's GPU-sized tiles).
PRIORITY = {"cpu": ("cpu", "chunked"), "cuda": ("triton", "flex", "chunked"), "other": ("chunked",)}

__all__ = ["BACKENDS", "PRIORITY", "Call"]
