"""Exit statuses of repeated short `sasa fit` runs: every one must be 0.

A run that trains, prints its summary and then aborts at interpreter exit (SIGABRT, "terminate
called without an active exception") marks a finished SLURM job FAILED. Two causes were found:
FFCV's reader threads (sasa_lightning/data/ffcv_epoch.py) and gloo's worker threads of a process
group left alive (sasa_lightning/distributed/process_group.py). Each run is the digits demo cut
to a few steps with its epochs cut short (limit_train_batches, limit_val_batches), the case that
left reader threads running; with --devices 2, in two DDP processes (or --strategy another
configs/strategy preset).

    python benchmarks/clean_exit.py            # or: sasa bench clean_exit; 20 runs, ~8 min on 2 cores
    python benchmarks/clean_exit.py --runs 3
    python benchmarks/clean_exit.py --devices 2 --out benchmarks/results/clean-exit-ddp-cpu.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from report import write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"


def short_fit(run: Path, cache: Path, devices: int, strategy: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "sasa_lightning.cli", "fit", "--config", str(ROOT / "configs/demo/digits.yaml"),
        "--model.init_args.model_options", '{"kernel_size": 3, "attention_stages": [4]}',
        "--data.init_args.batch_size", "16", "--data.init_args.num_workers", "1",
        "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2", "--trainer.max_epochs", "2",
        "--trainer.enable_model_summary", "false", "--trainer.default_root_dir", str(run),
    ]
    if devices > 1:
        command += ["--trainer.devices", str(devices), "--config", str(ROOT / "configs/strategy" / f"{strategy}.yaml")]
    env = dict(os.environ, SASA_CACHE=str(cache))
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--devices", type=int, default=1, help="processes per run (default 1)")
    parser.add_argument("--strategy", default="ddp", help="a configs/strategy preset, used with --devices > 1")
    parser.add_argument("--out", type=Path, default=RESULTS / "clean-exit-cpu.json")
    args = parser.parse_args()
    statuses = []
    with tempfile.TemporaryDirectory() as work:
        for index in range(args.runs):
            result = short_fit(Path(work) / f"run{index}", Path(work) / "cache", args.devices, args.strategy)
            statuses.append(result.returncode)
            tail = result.stderr.strip().splitlines()[-1:] if result.returncode else []
            print(f"run {index + 1}/{args.runs}: exit {result.returncode} {' '.join(tail)}", flush=True)
    failed = sum(status != 0 for status in statuses)
    print(f"{failed} of {args.runs} runs exited non-zero")
    strategy = args.strategy if args.devices > 1 else None
    write_report(args.out, "clean_exit", runs=args.runs, devices=args.devices, strategy=strategy, failed=failed,
                 statuses=statuses)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
