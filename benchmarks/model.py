"""Training throughput and peak memory of whole classifiers: SASA-ResNet-26/50 against ResNet-26/50.

One training step is forward, cross-entropy, backward and an SGD update on random images; on CPU
each model is measured in a process of its own (its peak memory is its own), on CUDA all in one
process with the peak counters reset between models (a process each costs seconds of CUDA
start-up, too many for a GPU lease); the attention models once per backend. CPU: 128x128, batch 32, float32. CUDA (when there is one): 224x224, batch 128,
bf16 autocast. Each model runs eagerly and under torch.compile (nn.Module.compile; the first
warm-up step compiles), the attention models compiled with the backends whose kernels are custom
ops (cpu, triton); the others run eagerly only. The ratio column is images/s against the conv
model of the same depth run the same way.

    python benchmarks/model.py                      # or: sasa bench model
    python benchmarks/model.py --quick              # small images, a smoke test
    python benchmarks/model.py --backends cpu,compiled --modes eager
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import write_report

RESULTS = Path(__file__).parent / "results"
PAIRS = [("resnet26", "sasa_resnet26"), ("resnet50", "sasa_resnet50")]
# On CUDA also the full-attention model (the paper's attention stem), against ResNet-50.
STEM_PAIR = ("resnet50", "sasa_resnet50_attention_stem")
VARIANT_MODELS = {"sasa_resnet50_attention_stem": ("sasa_resnet50", {"stem": "attention"})}
DEFAULT_BACKENDS = {"cpu": "cpu,chunked", "cuda": "triton"}
# Backends whose kernels torch.compile sees as one custom op each; the others trace into Python
# loops (chunked) or compile inside themselves (compiled, flex).
COMPILABLE = ("cpu", "triton")
MODES = ("eager", "compiled")
SETTINGS = {"cpu": {"size": 128, "batch": 32, "bf16": False}, "cuda": {"size": 224, "batch": 128, "bf16": True}}


def measure(model_name: str, backend: str, device: str, size: int, batch: int, bf16: bool, steps: int,
            compiled: bool) -> dict:
    """In a child process: median step time over `steps` steps after two warm-up steps (the
    first compiles when `compiled`), and peak memory."""
    import resource

    import torch

    from sasa_lightning.models import create_model

    torch.manual_seed(0)
    registry_name, options = VARIANT_MODELS.get(model_name, (model_name, {}))
    if model_name.startswith("sasa"):
        options = options | {"backend": backend}
    model = create_model(registry_name, num_classes=1000, **options).to(device)
    if compiled:
        model.compile()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
        del model, optimizer, images, labels
        torch.cuda.empty_cache()
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images_per_s": batch / statistics.median(times), "peak_mib": peak_mib}


def _run_child(*args) -> dict:
    name, backend, device, size, batch, bf16, steps, mode = args
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return measure(name, backend, device, size, batch, bf16, steps, mode == "compiled")
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, __file__, "--child", *map(str, args), out.name], check=True)
        return json.loads(Path(out.name).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="64x64 images, ResNet-26 only (a smoke test)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (median reported)")
    parser.add_argument("--backends", default=None,
                        help="attention backends to measure, comma-separated (default: cpu,chunked on CPU; "
                             "triton on CUDA)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="eager, compiled or both, comma-separated (default: both)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when there is one")
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/model-<device>.json)")
    parser.add_argument("--child", nargs=9, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        name, backend, device, size, batch, bf16, steps, mode, out = args.child
        result = measure(name, backend, device, int(size), int(batch), bf16 == "True", int(steps), mode == "compiled")
        Path(out).write_text(json.dumps(result))
        return 0
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    settings = dict(SETTINGS[device])
    pairs = PAIRS + ([STEM_PAIR] if device == "cuda" else [])
    if args.quick:
        settings["size"], pairs = 64, PAIRS[:1]
    backends = [b for b in (args.backends or DEFAULT_BACKENDS[device]).split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}, comma-separated; got {args.modes!r}")
    rows = []
    print(f"{'model':>14} {'backend':>8} {'mode':>8} {'images/s':>9} {'x conv':>7} {'peak MiB':>9}")
    for conv_name, sasa_name in pairs:
        for mode in modes:
            base = None
            for name, backend in [(conv_name, "-")] + [(sasa_name, b) for b in backends]:
                if mode == "compiled" and backend not in ("-", *COMPILABLE):
                    continue
                result = _run_child(name, backend, device, settings["size"], settings["batch"], settings["bf16"],
                                    args.steps, mode)
                base = base or result
                row = {"model": name, "backend": backend, "mode": mode, **result,
                       "vs_conv": result["images_per_s"] / base["images_per_s"]}
                rows.append(row)
                print(f"{name:>14} {backend:>8} {mode:>8} {row['images_per_s']:9.2f} {row['vs_conv']:7.2f} "
                      f"{row['peak_mib']:9.0f}", flush=True)
    write_report(
        args.out or RESULTS / f"model-{device}{'-quick' if args.quick else ''}.json",
        "model",
        **settings,
        note="one training step (forward, cross-entropy, backward, SGD) on random images; median of the timed steps "
             "(compiled: after the warm-up steps that compile); vs_conv: against the conv model in the same mode; peak_mib: the process's peak resident memory on CPU, torch's peak allocation on CUDA",
        results=rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
