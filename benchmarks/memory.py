"""Peak memory as the resolution grows: one layer per backend, and a whole SASA-ResNet-50 training
step per backend beside ResNet-50's, drawn as a PNG plot.

Layer: C = 64, k = 7, 8 heads, batch 1, the variants of layer.py (each in its own process, its
peak resident memory above its inputs during one forward+backward). Model: one training step
(forward, cross-entropy, backward) at batch 2, the process's peak resident memory above the
model and input. Resolutions from 64 to 512; a variant that needs more than --limit-gib is not
run at the larger sizes (the reference backends grow as k^2 activations).

    python benchmarks/memory.py            # or: sasa bench memory
    python benchmarks/memory.py --quick    # 32 and 64, conv and the cpu backend only: a smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from layer import _run_child, resident_peak_mib
from report import write_report

RESULTS = Path(__file__).parent / "results"
SIZES, QUICK_SIZES = [64, 128, 256, 512], [32, 64]
LAYER_VARIANTS = ["conv3x3", "sasa_cpu", "sasa_compiled", "sasa_chunked", "sasa_reference", "public_unfold"]
MODEL_VARIANTS = [("resnet50", "-"), ("sasa_resnet50", "cpu"), ("sasa_resnet50", "compiled"), ("sasa_resnet50", "chunked")]
QUICK_LAYER_VARIANTS, QUICK_MODEL_VARIANTS = LAYER_VARIANTS[:2], MODEL_VARIANTS[:2]
MODEL_BATCH = 2  # batch norm needs two values per channel at the last stage's 1x1
CHANNELS = 64


def model_peak(name: str, backend: str, size: int) -> float:
    """In a child process: peak resident MiB of one training step above what was resident before it."""
    import torch

    from sasa_lightning.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=1000, **({"backend": backend} if backend != "-" else {}))
    images, labels = torch.randn(MODEL_BATCH, 3, size, size), torch.zeros(MODEL_BATCH, dtype=torch.long)
    return resident_peak_mib(lambda: torch.nn.functional.cross_entropy(model(images), labels).backward())


def _model_child(name: str, backend: str, size: int) -> float:
    # As layer.py does for its memory runs: freed tensors leave the resident set at once.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, __file__, "--child", name, backend, str(size), out.name], env=env, check=True)
        return json.loads(Path(out.name).read_text())


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, kind, title in ((axes[0], "layer", f"one layer (C={CHANNELS}, k=7, batch 1)"),
                              (axes[1], "model", f"training step, batch {MODEL_BATCH}")):
        for label in dict.fromkeys(r["variant"] for r in rows if r["kind"] == kind):
            points = [(r["size"], r["peak_mib"]) for r in rows if r["kind"] == kind and r["variant"] == label]
            axis.plot(*zip(*points), marker="o", label=label)
        axis.set(xscale="log", yscale="log", xlabel="resolution (pixels a side)", ylabel="peak MiB", title=title)
        axis.minorticks_off()  # the log axis's minor labels would overprint the sizes
        axis.set_xticks(sorted({r["size"] for r in rows}), labels=[str(s) for s in sorted({r["size"] for r in rows})])
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    tmp = out.with_name(f".{out.name}.partial.png")
    figure.savefig(tmp, dpi=110)
    tmp.replace(out)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, conv and cpu only (a smoke test)")
    parser.add_argument("--limit-gib", type=float, default=8.0, help="skip larger sizes of a variant past this peak")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/memory-cpu.json)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, backend, size, out = args.child
        Path(out).write_text(json.dumps(model_peak(name, backend, int(size))))
        return 0

    sizes = QUICK_SIZES if args.quick else SIZES
    rows = []
    print(f"{'kind':>6} {'variant':>22} {'size':>5} {'peak MiB':>10}")

    def record(kind: str, variant: str, size: int, peak: float) -> None:
        rows.append({"kind": kind, "variant": variant, "size": size, "peak_mib": peak})
        print(f"{kind:>6} {variant:>22} {size:>5} {peak:10.1f}", flush=True)

    for variant in QUICK_LAYER_VARIANTS if args.quick else LAYER_VARIANTS:
        for size in sizes:
            peak = _run_child(variant, (1, CHANNELS, size, size), 0, "cpu")["peak_mib"]
            record("layer", variant, size, peak)
            if peak * 4 > args.limit_gib * 1024:  # the next size needs about 4x
                break
    for name, backend in QUICK_MODEL_VARIANTS if args.quick else MODEL_VARIANTS:
        label = name if backend == "-" else f"{name} {backend}"
        for size in sizes:
            peak = _model_child(name, backend, size)
            record("model", label, size, peak)
            if peak * 4 > args.limit_gib * 1024:
                break
    out = args.out or RESULTS / f"memory-cpu{'-quick' if args.quick else ''}.json"
    plot(rows, out.with_suffix(".png"))
    write_report(out, "memory", channels=CHANNELS, kernel_size=7, heads=8,
                 note="peak_mib: peak resident memory of one forward+backward above what was resident before it",
                 results=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
