"""A resumed run's logs: each start writes logs/version_N of its own, and one that resumes names
the version it continues, so the pieces read back as one history (`sasa plot`, the fit summary)."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

CONTINUES = "continues.txt"  # in a resumed run's log folder: the folder name of the part before it


def mark_continuation(log_dir: str | os.PathLike) -> None:
    """Record in log_dir (logs/version_N) that it continues the latest earlier version beside it."""
    log_dir = Path(log_dir)
    number = _version(log_dir)
    earlier = [v for v in log_dir.parent.glob("version_*") if v.is_dir() and -1 < _version(v) < number]
    if number < 0 or not earlier:
        return
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / CONTINUES).write_text(max(earlier, key=_version).name + "\n")


def _version(folder: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", folder.name)
    return int(match.group(1)) if match else -1


def run_history(log_dir: str | os.PathLike) -> list[Path]:
    """The log folders of the run that log_dir ends, first part first."""
    parts = [Path(log_dir)]
    while (parts[0] / CONTINUES).is_file() and len(parts) < 10_000:
        earlier = parts[0].parent / (parts[0] / CONTINUES).read_text().strip()
        if not earlier.is_dir() or earlier in parts:
            break
        parts.insert(0, earlier)
    return parts


def history_rows(log_dir: str | os.PathLike) -> list[dict[str, str]]:
    """metrics.csv rows of every part of the run in order. A part's rows from the step its
    successor restarted at on are dropped: that successor trained those steps again."""
    pieces = []
    for folder in run_history(log_dir):
        path = folder / "metrics.csv"
        if path.is_file():
            with path.open(newline="") as file:
                pieces.append(list(csv.DictReader(file)))
    rows = []
    for index, piece in enumerate(pieces):
        later = [float(r["step"]) for later in pieces[index + 1 :] for r in later if r.get("step")]
        restart = min(later) if later else float("inf")
        rows += [r for r in piece if not r.get("step") or float(r["step"]) < restart]
    return rows
