"""Files that are either complete or absent: written beside their target, then renamed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(out: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """write(a temporary path beside out), then rename it to out.

    A reader sees the whole file or none, and a failed write leaves nothing behind. The temporary
    name carries the process id (ranks may write at once) and out's suffix (writers that pick
    the format by suffix).
    """
    out = Path(out)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}{out.suffix}")
    try:
        write(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out
