"""Forward+backward time and peak memory of one local-attention layer per backend, vs a 3x3 conv.

Each variant is measured in processes of its own, so its peak memory is its own: peak resident
memory during one forward+backward minus the resident memory just before it (inputs, weights and
the output gradient already allocated). For the memory run glibc's mmap threshold is fixed so
that freed tensors leave the resident set at once (otherwise the allocator's caching hides or
inflates peaks); that makes every allocation fault in fresh pages, so time is measured in a
second process with the default allocator.

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

from report import write_report

SHAPES = [(16, 64, 56, 56), (16, 256, 14, 14)]
QUICK_SHAPES = [(2, 32, 16, 16)]
KERNEL_SIZE, HEADS = 7, 8
VARIANTS = ["conv3x3", "conv3x3_channels_last", "sasa_cpu", "sasa_chunked", "sasa_reference", "public_unfold"]
RESULTS = Path(__file__).parent / "results"


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


def _resident_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(variant: str, shape: tuple[int, int, int, int], repeats: int) -> dict:
    """Run in a child process: peak memory (repeats == 0) or median time of one variant at one shape."""
    import torch
    from torch import nn

    from sasa_lightning.nn import LocalSelfAttention2d

    torch.manual_seed(0)
    batch, channels, height, width = shape
    memory_format = torch.channels_last if variant.endswith("channels_last") else torch.contiguous_format
    if variant.startswith("conv3x3"):
        layer = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
    elif variant == "public_unfold":
        layer = public_unfold_layer(channels)
    else:
        backend = variant.removeprefix("sasa_")
        layer = LocalSelfAttention2d(channels, channels, KERNEL_SIZE, HEADS, backend=backend)
    layer = layer.to(memory_format=memory_format)
    x = torch.randn(shape).to(memory_format=memory_format).requires_grad_()
    grad_out = torch.randn(shape).to(memory_format=memory_format)

    def step():
        layer(x).backward(grad_out)
        x.grad = None
        layer.zero_grad(set_to_none=True)

    step()  # warm-up: one-time allocations and kernel selection
    if repeats == 0:
        before = _resident_mib("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # resets VmHWM, the peak resident set, to the current one
        step()
        peak = _resident_mib("VmHWM") - before
        activation_mib = batch * channels * height * width * 4 / 2**20
        return {"peak_mib": peak, "peak_activations": peak / activation_mib}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"time_s": statistics.median(times), "params": sum(p.numel() for p in layer.parameters())}


def _run_child(variant: str, shape, repeats: int) -> dict:
    env = dict(os.environ)
    if repeats == 0:
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--child", variant, ",".join(map(str, shape)), str(repeats), out.name]
        subprocess.run(command, env=env, check=True)
        return json.loads(Path(out.name).read_text())


def measure_variant(variant: str, shape, repeats: int) -> dict:
    return {"variant": variant, "shape": list(shape), **_run_child(variant, shape, 0), **_run_child(variant, shape, repeats)}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke test)")
    parser.add_argument("--repeats", type=_positive, default=3, help="timed forward+backward passes (median reported)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/layer-cpu.json)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        variant, shape, repeats, out = args.child
        result = measure(variant, tuple(int(s) for s in shape.split(",")), int(repeats))
        Path(out).write_text(json.dumps(result))
        return 0

    rows = []
    print(f"{'shape':>18} {'variant':>22} {'time s':>8} {'x conv':>7} {'peak MiB':>9} {'x conv':>7} {'activations':>11}")
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        conv = None
        for variant in args.variants.split(","):
            result = measure_variant(variant, shape, args.repeats)
            conv = conv or (result if variant == "conv3x3" else None)
            if conv:
                result["time_vs_conv"] = result["time_s"] / conv["time_s"]
                result["peak_vs_conv"] = result["peak_mib"] / conv["peak_mib"]
            rows.append(result)
            print(
                f"{str(tuple(shape)):>18} {variant:>22} {result['time_s']:8.3f} {result.get('time_vs_conv', float('nan')):7.2f} "
                f"{result['peak_mib']:9.1f} {result.get('peak_vs_conv', float('nan')):7.2f} {result['peak_activations']:11.2f}",
                flush=True,
            )
    write_report(
        args.out or RESULTS / ("layer-cpu-quick.json" if args.quick else "layer-cpu.json"),
        "layer",
        kernel_size=KERNEL_SIZE,
        heads=HEADS,
        note="peak_mib: peak resident memory of one forward+backward above the inputs; activations: in units of one input tensor",
        results=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
