"""Implementations of local attention, one module each, every one a contract.Backend: can_run(call),
local_attention(*, q, k, v, ...) and local_self_attention(*, x, weights, ...).

fused.py and custom_ops.py are not backends: fused.py computes around the fused kernels (cpu,
compiled, triton) and holds the CPU's chunked layer path, custom_ops.py makes that the
torch.library ops with their autograd, which those backends call. The triton backend's parts:
triton_kernels.py (the kernels), triton_launch.py (tiles, variants, launchers) and
triton_layer.py (its layer path for GPUs).
"""

from . import chunked, compiled, cpu, flex, reference, triton_attention
from .call import Call
from .contract import Backend

BACKENDS: dict[str, Backend] = {
    "reference": reference, "chunked": chunked, "cpu": cpu, "compiled": compiled, "flex": flex,
    "triton": triton_attention,
}

# What "auto" tries, per device type, first to last; the last always runs. On CPU the C++ kernel
# (README, Performance: 3-8x faster than compiled, which compiles for minutes). On CUDA the fused
# Triton kernels on tensor cores; where they cannot run (head dims above 64, larger windows, no
# triton), flex: measured on an H200 at (64, 64, 56, 56) at 43 ms a forward+backward against
# chunked's 2.4 s (issue 23's table, before chunked's GPU-sized tiles).
PRIORITY = {"cpu": ("cpu", "chunked"), "cuda": ("triton", "flex", "chunked"), "other": ("chunked",)}

__all__ = ["BACKENDS", "PRIORITY", "Backend", "Call"]
