"""The `sasa` command."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path


def summary(tables: list[int], output_format: str) -> list[dict]:
    from .models import complexity, create_model
    from .models.paper import PAPER_TABLES

    results = []
    for table in tables:
        for row in PAPER_TABLES[table]:
            measured = complexity(create_model(row.model, **row.overrides))
            results.append({**asdict(row), "params_m": round(measured.params_m, 3), "gflops": round(measured.gflops, 3)})
            if output_format == "text":
                _print_row(results[-1], first=len(results) == 1 or results[-2]["table"] != table)
    if output_format == "json":
        print(json.dumps(results, indent=2))
    return results


def _relative(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{100 * (ours / paper - 1):+.1f}%"


def _print_row(result: dict, first: bool) -> None:
    if first:
        print(f"\nTable {result['table']}")
        print(f"{'row':42} {'model':14} {'params M':>8} {'paper':>6} {'diff':>6}   {'GFLOPs':>6} {'paper':>6} {'diff':>6}")
    paper_params = result["paper_params_m"]
    print(
        f"{result['row']:42} {result['model']:14} {result['params_m']:8.2f} "
        f"{'-' if paper_params is None else paper_params:>6} {_relative(result['params_m'], paper_params):>6}   "
        f"{result['gflops']:6.2f} {result['paper_gflops']:>6} {_relative(result['gflops'], result['paper_gflops']):>6}",
        flush=True,
    )


def run_benchmark(name: str, args: list[str]) -> int:
    """Run benchmarks/<name>.py of the source checkout (benchmarks are not part of the wheel)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    if not script.is_file():
        print(f"sasa bench: {script} not found; benchmarks run from a source checkout of sasa-lightning", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, str(script), *args]).returncode


def _parser() -> argparse.ArgumentParser:
    from .models.paper import PAPER_TABLES

    parser = argparse.ArgumentParser(prog="sasa", description="Stand-alone self-attention vision models.")
    commands = parser.add_subparsers(dest="command", required=True)
    tables = commands.add_parser("summary", help="our parameter and FLOP counts beside the paper's tables")
    tables.add_argument("--table", type=int, action="append", choices=sorted(PAPER_TABLES), help="repeatable; default: all")
    tables.add_argument("--format", choices=("text", "json"), default="text")
    bench = commands.add_parser("bench", help="benchmarks (see benchmarks/)")
    bench.add_argument("name", choices=("layer",))
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "summary":
        from .models.paper import PAPER_TABLES

        summary(args.table or sorted(PAPER_TABLES), args.format)
    elif args.command == "bench":
        return run_benchmark(args.name, args.args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
