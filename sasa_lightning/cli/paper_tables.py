"""`sasa summary`: our parameter and FLOP counts beside the paper's tables."""

from __future__ import annotations

import json
from dataclasses import asdict


def summary(tables: list[int], output_format: str) -> list[dict]:
    from ..models import complexity, create_model
    from ..models.paper import PAPER_TABLES

    results = []
    for table in tables:
        for row in PAPER_TABLES[table]:
            measured = complexity(create_model(row.model, **row.overrides), (3, row.image_size, row.image_size))
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
        print(f"{'row':46} {'model':23} {'params M':>8} {'paper':>6} {'diff':>6}   {'GFLOPs':>6} {'paper':>6} {'diff':>6}")
    paper_params = result["paper_params_m"]
    print(
        f"{result['row']:46} {result['model']:23} {result['params_m']:8.2f} "
        f"{'-' if paper_params is None else paper_params:>6} {_relative(result['params_m'], paper_params):>6}   "
        f"{result['gflops']:6.2f} {result['paper_gflops']:>6} {_relative(result['gflops'], result['paper_gflops']):>6}",
        flush=True,
    )
