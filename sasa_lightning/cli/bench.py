"""`sasa bench`: the benchmarks of the source checkout (benchmarks/, not part of the wheel)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# What `sasa bench NAME` runs: benchmarks/NAME.py (a dash in NAME is an underscore in the file's).
BENCHMARKS = ("layer", "model", "memory", "data", "scaling", "clean_exit", "triton-compile", "performance-model",
              "triton-tiles", "profile-cuda")


def run_benchmark(name: str, args: list[str]) -> int:
    """Run benchmarks/<name>.py of the source checkout (benchmarks are not part of the wheel);
    a dash in the name is an underscore in the file's."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name.replace('-', '_')}.py"
    if not script.is_file():
        print(f"sasa bench: {script} not found; benchmarks run from a source checkout of sasa-lightning", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, str(script), *args]).returncode
