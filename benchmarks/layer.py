"""Forward+backward time, peak memory and achieved GFLOP/s of one local-attention layer per
backend, against a 3x3 conv of the same width, the public reimplementations' unfold style, timm's
HaloAttn and (on CUDA, when installed) NATTEN's na2d.

On CPU each variant is measured in processes of its own, so its peak memory is its own: the peak
resident memory during one forward+backward minus the resident memory just before it (inputs,
weights and the output gradient already allocated); for that run glibc's mmap threshold is fixed
so that freed tensors leave the resident set at once (otherwise the allocator's caching hides or
inflates peaks), which makes every allocation fault in fresh pages, so time is measured in a
second process with the default allocator. On CUDA every variant runs in one process (a process
per variant costs seconds of CUDA start-up each, too many for a GPU lease): times by CUDA events,
the median of up to 10 after warm-ups, and torch's peak allocation above the same base, the
peak counters reset between variants. On CUDA the layers run under bf16 autocast, as GPU
training does.

GFLOP/s counts the paper's FLOPs of the layer (forward: projections and k^2 * d_out per pixel
for each of q.k, q.r and the weighted sum; backward: twice the forward), beside a large matmul's
GFLOP/s on the same device, the reachable peak. The first call (where compiled backends compile)
is reported on its own.

    python benchmarks/layer.py            # or: sasa bench layer
    python benchmarks/layer.py --quick    # smaller shapes, a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from report import write_report

SHAPES = {"cpu": [(16, 64, 56, 56), (16, 256, 14, 14)], "cuda": [(64, 64, 56, 56), (64, 256, 14, 14)]}
QUICK_SHAPES = [(2, 32, 16, 16)]
KERNEL_SIZE, HEADS = 7, 8
VARIANTS = {
    "cpu": ["conv3x3", "conv3x3_channels_last", "sasa_cpu", "sasa_compiled", "sasa_chunked", "sasa_reference",
            "public_unfold", "halo_timm"],
    "cuda": ["conv3x3", "conv3x3_channels_last", "sasa_triton", "sasa_triton_channels_last", "sasa_flex",
             "sasa_chunked", "public_unfold", "halo_timm", "natten_na2d"],
}
RESULTS = Path(__file__).parent / "results"


class Unavailable(Exception):
    """A comparison that cannot run here (a package missing, or a shape its design refuses)."""


def public_unfold_layer(channels: int):
    """The layout of the most-starred public reimplementation, kept here for comparison only.

    It materialises every k x k window of keys and values with unfold and multiplies q and k
    element-wise without summing over channels (a softmax per channel, not per head).
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class PublicUnfoldAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)
            self.rel_h = nn.Parameter(torch.randn(channels // 2, 1, 1, KERNEL_SIZE, 1))
            self.rel_w = nn.Parameter(torch.randn(channels // 2, 1, 1, 1, KERNEL_SIZE))

        def forward(self, x):
            batch, _, height, width = x.shape
            p = KERNEL_SIZE // 2
            q, k, v = self.qkv(x).chunk(3, dim=1)
            k = F.pad(k, [p] * 4).unfold(2, KERNEL_SIZE, 1).unfold(3, KERNEL_SIZE, 1)
            v = F.pad(v, [p] * 4).unfold(2, KERNEL_SIZE, 1).unfold(3, KERNEL_SIZE, 1)
            k_h, k_w = k.split(channels // 2, dim=1)
            k = torch.cat((k_h + self.rel_h, k_w + self.rel_w), dim=1)
            shape = (batch, HEADS, channels // HEADS, height, width, -1)
            k, v = k.contiguous().view(shape), v.contiguous().view(shape)
            weights = F.softmax(q.view(batch, HEADS, channels // HEADS, height, width, 1) * k, dim=-1)
            return torch.einsum("bnchwk,bnchwk->bnchw", weights, v).reshape(batch, channels, height, width)

    return PublicUnfoldAttention()


def halo_layer(channels: int, height: int, width: int):
    """timm's HaloAttn (blocked local attention with relative positions): blocks of b x b queries
    attend to their block plus a halo of 3 pixels, a (b + 6)^2 window, near k = 7's 49 keys for
    b = 1 and 196 for b = 8. Its blocks must tile the image."""
    try:
        from timm.layers.halo_attn import HaloAttn
    except ImportError as error:
        raise Unavailable("timm is not installed (pip install timm, or the package's bench extra)") from error
    block = next((b for b in (8, 7) if height % b == 0 and width % b == 0), None)
    if block is None:
        raise Unavailable(f"HaloAttn needs blocks of 7 or 8 that tile {height}x{width}")
    return HaloAttn(channels, channels, num_heads=HEADS, block_size=block, halo_size=KERNEL_SIZE // 2)


def natten_layer(channels: int):
    """NATTEN's neighbourhood attention (na2d), k x k windows that shift inward at borders and no
    q.r term; projections as ours."""
    try:
        from natten.functional import na2d
    except ImportError as error:
        raise Unavailable("natten is not installed") from error
    import torch
    from torch import nn

    class NeighborhoodAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)

        def forward(self, x):
            batch, _, height, width = x.shape
            # na2d takes (B, H, W, heads, head_dim).
            q, k, v = (t.view(batch, HEADS, -1, height, width).permute(0, 3, 4, 1, 2)
                       for t in self.qkv(x).chunk(3, dim=1))
            out = na2d(q, k, v, kernel_size=KERNEL_SIZE, scale=1.0)
            return out.permute(0, 3, 4, 1, 2).reshape(batch, channels, height, width)

    return NeighborhoodAttention()


def make_layer(variant: str, shape):
    from torch import nn

    from sasa_lightning.nn import LocalSelfAttention2d

    _, channels, height, width = shape
    if variant.startswith("conv3x3"):
        return nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    if variant == "public_unfold":
        return public_unfold_layer(channels)
    if variant == "halo_timm":
        return halo_layer(channels, height, width)
    if variant == "natten_na2d":
        return natten_layer(channels)
    backend = variant.removeprefix("sasa_").removesuffix("_channels_last")
    return LocalSelfAttention2d(channels, channels, KERNEL_SIZE, HEADS, backend=backend)


def forward_gflop(variant: str, shape) -> float:
    """The layer's forward FLOPs (2 per multiply-add) by the paper's count; for the other
    attention layers, the same count (what they compute of eq. 3)."""
    from sasa_lightning.nn import LocalSelfAttention2d

    batch, channels, height, width = shape
    if variant.startswith("conv3x3"):
        macs = 9 * channels * channels * height * width
    else:
        macs = LocalSelfAttention2d(channels, channels, KERNEL_SIZE, HEADS).attention_macs(height, width)
    return 2 * batch * macs / 1e9


def _peak_hwm_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("VmHWM not in /proc/self/status")


def resident_peak_mib(run: Callable[[], object]) -> float:
    """Peak resident MiB of this process while `run()` runs, above what was resident when it began."""
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM, the peak resident set, to the current one
    # The base is the reset peak itself: a VmRSS read just before could be above it (pages freed in
    # between), and a small step's peak then came out negative.
    before = _peak_hwm_mib()
    run()
    # The kernel keeps RSS in per-CPU counters and reads them approximately, so a step that needs no
    # new pages can read a page or two below its base (CI saw -0.004 MiB): that is a peak of zero.
    return max(0.0, _peak_hwm_mib() - before)


def measure(variant: str, shape: tuple[int, int, int, int], repeats: int, device: str) -> dict:
    """Run in a child process: peak memory (repeats == 0) or times of one variant at one shape."""
    import torch

    torch.manual_seed(0)
    memory_format = torch.channels_last if variant.endswith("channels_last") else torch.contiguous_format
    layer = make_layer(variant, shape).to(device=device, memory_format=memory_format)
    x = torch.randn(shape, device=device).to(memory_format=memory_format).requires_grad_()
    grad_out = torch.randn(shape, device=device).to(memory_format=memory_format)

    def step() -> float:
        start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):  # bf16 training on GPUs
            out = layer(x)
        out.backward(grad_out.to(out.dtype))
        x.grad = None
        layer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    first_call = step()  # one-time allocations, kernel selection, compilation
    if repeats == 0:
        activation_mib = x.numel() * 4 / 2**20
        if device == "cuda":
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        else:
            peak = resident_peak_mib(step)
        return {"peak_mib": peak, "peak_activations": peak / activation_mib}
    times = [step() for _ in range(repeats)]
    return {"time_s": statistics.median(times), "first_call_s": first_call,
            "params": sum(p.numel() for p in layer.parameters())}


def measure_cuda(variant: str, shape: tuple[int, int, int, int]) -> dict:
    """One variant in this process on CUDA: peak allocation above the inputs, then times by CUDA
    events (median after warm-ups; fewer repeats for slow variants)."""
    import torch

    torch.manual_seed(0)
    memory_format = torch.channels_last if variant.endswith("channels_last") else torch.contiguous_format
    layer = make_layer(variant, shape).to(device="cuda", memory_format=memory_format)
    x = torch.randn(shape, device="cuda").to(memory_format=memory_format).requires_grad_()
    grad_out = torch.randn(shape, device="cuda").to(memory_format=memory_format)

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = layer(x)
        out.backward(grad_out.to(out.dtype))
        x.grad = None
        layer.zero_grad(set_to_none=True)

    start = time.perf_counter()
    step()  # one-time allocations, kernel selection, compilation
    torch.cuda.synchronize()
    first_call = time.perf_counter() - start
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    times = cuda_times(step)
    forward_times = cuda_times(lambda: _forward_only(layer, x))
    return {"time_s": statistics.median(times), "forward_s": statistics.median(forward_times),
            "first_call_s": first_call, "peak_mib": peak, "peak_activations": peak / (x.numel() * 4 / 2**20),
            "params": sum(p.numel() for p in layer.parameters())}


def _forward_only(layer, x) -> None:
    import torch

    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        layer(x)


def cuda_times(work, budget_s: float = 1.5, at_most: int = 10) -> list[float]:
    """Seconds of `work` by CUDA events after two warm-ups; as many repeats (2 to at_most) as fit
    budget_s by the warm-ups' time."""
    import torch

    def timed() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        work()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    warm = [timed() for _ in range(2)]
    repeats = max(2, min(at_most, int(budget_s / max(min(warm), 1e-6))))
    return [timed() for _ in range(repeats)]


def matmul_gflops(device: str) -> float:
    """GFLOP/s of a large float32 matrix product: the device's reachable peak for this arithmetic."""
    import torch

    size = 4096 if device == "cuda" else 2048
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times[1:]) / 1e9


def _run_child(variant: str, shape, repeats: int, device: str) -> dict:
    env = dict(os.environ)
    if repeats == 0 and device == "cpu":
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--child", variant, ",".join(map(str, shape)), str(repeats), device, out.name]
        subprocess.run(command, env=env, check=True)
        return json.loads(Path(out.name).read_text())


def measure_variant(variant: str, shape, repeats: int, device: str) -> dict:
    if device == "cuda":
        import torch

        try:
            result = measure_cuda(variant, shape)
        except Unavailable as reason:
            result = {"unavailable": str(reason)}
        torch.cuda.empty_cache()
        return {"variant": variant, "shape": list(shape), **result}
    return {"variant": variant, "shape": list(shape), **_run_child(variant, shape, 0, device),
            **_run_child(variant, shape, repeats, device)}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    parser.add_argument("--repeats", type=_positive, default=3, help="timed forward+backward passes (median reported)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when there is one")
    parser.add_argument("--variants", default=None, help="comma-separated (default: every variant of the device)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/layer-<device>.json)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, shape, repeats, device, out = args.child
        try:
            result = measure(variant, tuple(int(s) for s in shape.split(",")), int(repeats), device)
        except Unavailable as reason:
            result = {"unavailable": str(reason)}
        Path(out).write_text(json.dumps(result))
        return 0

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    variants = args.variants.split(",") if args.variants else VARIANTS[device]
    peak_gflops = matmul_gflops(device)
    print(f"{device}: a {'4096' if device == 'cuda' else '2048'}^2 float32 matmul runs at {peak_gflops:.0f} GFLOP/s")
    rows = []
    print(f"{'shape':>18} {'variant':>22} {'time s':>8} {'x conv':>7} {'peak MiB':>9} {'x conv':>7} "
          f"{'GFLOP/s':>8} {'of peak':>8} {'1st call s':>10}")
    for shape in QUICK_SHAPES if args.quick else SHAPES[device]:
        conv = None
        for variant in variants:
            result = measure_variant(variant, shape, args.repeats, device)
            if "unavailable" in result:
                print(f"{str(tuple(shape)):>18} {variant:>22}  not measured: {result['unavailable']}", flush=True)
                rows.append({"variant": variant, "shape": list(shape), "unavailable": result["unavailable"]})
                continue
            result["gflops"] = 3 * forward_gflop(variant, shape) / result["time_s"]
            result["fraction_of_matmul"] = result["gflops"] / peak_gflops
            conv = conv or (result if variant == "conv3x3" else None)
            if conv:
                result["time_vs_conv"] = result["time_s"] / conv["time_s"]
                if "forward_s" in conv:
                    result["forward_vs_conv"] = result["forward_s"] / conv["forward_s"]
                # At the quick shapes the conv's peak can stay within pages already resident (0 MiB).
                if conv["peak_mib"] > 0:
                    result["peak_vs_conv"] = result["peak_mib"] / conv["peak_mib"]
            rows.append(result)
            print(
                f"{str(tuple(shape)):>18} {variant:>22} {result['time_s']:8.3f} {result.get('time_vs_conv', float('nan')):7.2f} "
                f"{result['peak_mib']:9.1f} {result.get('peak_vs_conv', float('nan')):7.2f} {result['gflops']:8.1f} "
                f"{result['fraction_of_matmul']:8.3f} {result['first_call_s']:10.2f}"
                + (f"  forward {result['forward_s'] * 1e3:.3f} ms, x conv {result.get('forward_vs_conv', float('nan')):.2f}"
                   if "forward_s" in result else ""),
                flush=True,
            )
    write_report(
        args.out or RESULTS / f"layer-{device}{'-quick' if args.quick else ''}.json",
        "layer",
        kernel_size=KERNEL_SIZE,
        heads=HEADS,
        matmul_gflops=peak_gflops,
        note="peak_mib: peak memory of one forward+backward above the inputs (CPU: resident, CUDA: allocated); "
             "activations: in units of one input tensor; gflops: the paper's FLOPs of forward+backward (3x forward) "
             "per second; first_call_s: the first forward+backward, compilation included; forward_s (CUDA): the "
             "forward alone, without gradients",
        results=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
