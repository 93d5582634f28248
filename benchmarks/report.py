"""What every benchmark records beside its numbers, and the atomic write of its JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path


def write_report(out: Path, benchmark: str, **fields) -> Path:
    """Write {benchmark, device, [gpu,] torch, date, **fields} to `out` under a temporary name, then rename."""
    import torch

    report = {
        "benchmark": benchmark,
        "device": f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads",
        **({"gpu": torch.cuda.get_device_name()} if torch.cuda.is_available() else {}),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return out
