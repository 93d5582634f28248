"""Progress of a long write (`sasa data write-ffcv`): a bar in a terminal, lines in a log.

A SLURM job that writes ImageNet's .beton files runs for hours with its output in a file, where
a bar (redrawn with carriage returns) is either noise or, as tqdm does with disable=None,
nothing at all: there it prints a line every `every_seconds` with the count, the rate and the
time left, as `sasa fit`'s LineProgress does for training, and one when it ends.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class WriteProgress:
    def __init__(self, total: int, what: str = "images", every_seconds: float = 30.0, stream: TextIO | None = None) -> None:
        self.total, self.what, self.every_seconds = total, what, every_seconds
        self.stream = stream or sys.stderr
        self.done = 0
        self._started = self._last = time.monotonic()
        self._bar = None
        if self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit=" " + what, file=self.stream)

    def update(self, done: int) -> None:
        """`done` of the total are written so far."""
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        self.done = done
        now = time.monotonic()
        if self._bar is None and now - self._last >= self.every_seconds and done < self.total:
            self._last = now
            rate = done / max(now - self._started, 1e-9)
            left = f"{(self.total - done) / rate:.0f} s left" if rate > 0 else "time left unknown"
            self._print(f"written {done:,}/{self.total:,} {self.what}  {rate:,.0f} {self.what}/s  {left}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.done == self.total:
            seconds = time.monotonic() - self._started
            self._print(f"written {self.done:,} {self.what} in {seconds:.1f} s ({self.done / max(seconds, 1e-9):,.0f} {self.what}/s)")

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
