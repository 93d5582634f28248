"""torch.profiler on a GPU: where one forward+backward of a SASA layer, or of the attention stem,
spends its time. Prints the kernels by GPU time (bf16 autocast, as training runs), the kernel
launches per forward+backward and the GPU-busy time against the wall time, and writes
benchmarks/results/profile-<target>-cuda.json.

    python benchmarks/profile_cuda.py                 # the triton layer at (64, 64, 56, 56)
    python benchmarks/profile_cuda.py --target stem   # the attention stem, (128, 3, 224, 224)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from report import write_report

RESULTS = Path(__file__).parent / "results"
TARGETS = {"layer": (64, 64, 56, 56), "layer14": (64, 256, 14, 14), "stem": (128, 3, 224, 224)}
CALLS = 3


def make_module(target: str, backend: str):
    from sasa_lightning.nn import AttentionStem, LocalSelfAttention2d

    if target == "stem":
        return AttentionStem(3, 64)
    channels = TARGETS[target][1]
    return LocalSelfAttention2d(channels, channels, 7, 8, backend=backend)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", choices=tuple(TARGETS), default="layer")
    parser.add_argument("--backend", default="triton", help="the layer's backend (default triton)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch
    from torch.profiler import ProfilerActivity, profile

    if not torch.cuda.is_available():
        print("profile_cuda.py: needs a CUDA GPU; torch sees none here", file=sys.stderr)
        return 2
    shape = TARGETS[args.target]
    module = make_module(args.target, args.backend).cuda()
    x = torch.randn(shape, device="cuda", requires_grad=True)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = module(x)
        out.float().sum().backward()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(CALLS):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / CALLS
    kernels = [e for e in prof.key_averages() if _device_time(e) > 0 and e.key and not e.key.startswith("aten::")
               and not e.key.startswith("autograd") and e.self_cpu_time_total == 0]
    busy = sum(_device_time(e) for e in kernels) / CALLS / 1e6
    launches = sum(e.count for e in kernels) / CALLS
    print(prof.key_averages().table(sort_by=_sort_key(prof), row_limit=25))
    rows = sorted(({"kernel": e.key, "calls": e.count / CALLS, "time_s": _device_time(e) / CALLS / 1e6}
                   for e in kernels), key=lambda r: -r["time_s"])
    print(f"{args.target} {shape}: {launches:.0f} kernel launches per forward+backward, GPU busy {busy * 1e3:.3f} ms "
          f"of {wall * 1e3:.3f} ms wall")
    write_report(args.out or RESULTS / f"profile-{args.target}-cuda.json", "profile", target=args.target,
                 shape=list(shape), backend=args.backend, wall_s=wall, gpu_busy_s=busy, launches=launches,
                 note="per forward+backward under bf16 autocast, the mean of 3 after 2 warm-ups", kernels=rows)
    return 0


def _device_time(event) -> float:
    """Microseconds on the GPU (torch renamed cuda_time to device_time)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(event, name):
            return getattr(event, name)
    return 0.0


def _sort_key(prof) -> str:
    first = next(iter(prof.key_averages()), None)
    return "self_device_time_total" if first is not None and hasattr(first, "self_device_time_total") \
        else "self_cuda_time_total"


if __name__ == "__main__":
    sys.exit(main())
