"""Training throughput against the number of processes: 1 and 2 CPU processes (DDP, gloo), and
1..N GPUs when there are any. Weak scaling: every process keeps its batch, so the global batch grows.

Each point is a real `sasa fit` of the digits demo (SASA-ResNet-26, 32x32, FFCV) for --steps
steps; images/s is the global rate the task logs per step (all processes' images over the step's
wall time, data loading included), median over the steps after the first --warmup. On CPU the
machine's cores are split between the processes (OMP_NUM_THREADS), so the ideal is the same
images/s at every count: scaling shows what DDP's all-reduce and the extra processes cost.

    python benchmarks/scaling.py            # or: sasa bench scaling
    python benchmarks/scaling.py --steps 20 --warmup 5   # a smoke test
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from report import write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def throughput(processes: int, accelerator: str, steps: int, warmup: int, batch_size: int, work: Path) -> float:
    run = work / f"{accelerator}{processes}"
    command = [
        sys.executable, "-m", "sasa_lightning.cli", "fit", "--config", str(ROOT / "configs/demo/digits.yaml"),
        "--trainer.accelerator", accelerator, "--trainer.devices", str(processes),
        "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
        "--trainer.enable_model_summary", "false",
        "--data.init_args.batch_size", str(batch_size), "--data.init_args.num_workers", "1",
        "--trainer.default_root_dir", str(run),
    ]
    if processes > 1:
        command += ["--trainer.strategy", "ddp"]
    if accelerator == "gpu":
        command += ["--trainer.precision", "bf16-mixed"]
    threads = max(1, (os.cpu_count() or 1) // processes) if accelerator == "cpu" else 4
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), SASA_CACHE=str(work / "cache"))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"scaling: {processes} {accelerator} process(es) failed:\n{result.stderr[-3000:]}")
    with next((run / "logs").glob("version_*/metrics.csv")).open() as file:
        rates = [float(row["train/images_per_s"]) for row in csv.DictReader(file) if row.get("train/images_per_s")]
    return statistics.median(rates[warmup:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.warmup >= args.steps - 1:
        parser.error(f"--warmup ({args.warmup}) must leave steps to measure (--steps {args.steps})")

    import torch

    points = [("cpu", n) for n in (1, 2)]
    if torch.cuda.is_available():
        points += [("gpu", n) for n in range(1, torch.cuda.device_count() + 1)]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for accelerator, processes in points:
            rate = throughput(processes, accelerator, args.steps, args.warmup, args.batch_size, Path(work))
            base = next((r["images_per_s"] for r in rows if r["accelerator"] == accelerator), rate)
            rows.append({"accelerator": accelerator, "processes": processes, "global_batch": processes * args.batch_size,
                         "images_per_s": round(rate, 1), "speedup": round(rate / base, 2)})
            print(f"{accelerator} x{processes}: {rate:8.1f} images/s  ({rate / base:.2f}x one process)", flush=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = args.out or RESULTS / f"scaling-{device}.json"
    write_report(out, "scaling", model="sasa_resnet26 (digits demo, 32x32, k=3)", batch_per_process=args.batch_size,
                 steps=args.steps, warmup=args.warmup, rows=rows,
                 gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
    return 0


if __name__ == "__main__":
    sys.exit(main())
