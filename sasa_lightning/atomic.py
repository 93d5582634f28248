"""Files and folders that are either complete or absent: written beside their target, then renamed."""

from __future__ import annotations

import errno
import glob
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator


def atomic_write(out: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """write(a temporary path beside out), then rename it to out.

    A reader sees the whole file or none, and a failed write leaves nothing behind. The temporary
    name carries the process id (ranks may write at once) and out's suffix (writers that pick
    the format by suffix). What a killed writer (SIGKILL, a lost node) left is removed by the next
    write of the same file.
    """
    out = Path(out)
    remove_stale_partials(out)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}{out.suffix}")
    try:
        write(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return out


@contextmanager
def atomic_dir(out: str | os.PathLike) -> Iterator[Path]:
    """`with atomic_dir(out) as partial:` fill the empty folder `partial` beside out; when the block
    ends without an error it replaces out (a folder already there goes), and otherwise it is
    removed. As with atomic_write, the name carries the process id, and what a killed writer left
    is removed by the next write of the same folder.
    """
    out = Path(out)
    make_parent(out)
    remove_stale_partials(out)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        shutil.rmtree(out, ignore_errors=True)
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def refuse_file_on_path(out: str | os.PathLike) -> None:
    """Raise one line naming the culprit when a folder on the path of `out` is a file; creates nothing."""
    parent = Path(out).parent
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise OSError(errno.ENOTDIR, f"cannot write {str(out)!r}: a folder on its path is a file", str(folder))
            return


def make_parent(out: str | os.PathLike) -> None:
    """Create the folder `out` goes in; one line naming the culprit when part of that path is a file."""
    refuse_file_on_path(out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)


def remove_stale_partials(out: Path) -> None:
    """Delete the temporary files or folders of `out` whose writing process no longer exists."""
    for stale in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        pid = stale.name[len(f".{out.name}.partial-") :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
