"""atomic_write and atomic_dir: the result is whole or absent, whatever happens while writing."""

import os
import subprocess
import sys

import pytest

from sasa_lightning.atomic import atomic_dir
from sasa_lightning.data.data_module import DataModule, usable_cores


def test_a_folder_replaces_the_old_one_only_when_it_is_complete(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as partial:
            (partial / "new.txt").write_text("half")
            raise RuntimeError("the writer failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"] and (out / "old.txt").read_text() == "old"
    with atomic_dir(out) as partial:
        assert partial.parent == tmp_path and list(partial.iterdir()) == []
        (partial / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_what_a_killed_writer_left_goes_at_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".data.partial-{int(dead.stdout)}"
    (stale / "train").mkdir(parents=True)
    with atomic_dir(tmp_path / "data") as partial:
        (partial / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_folder_on_the_way_that_is_a_file_is_named(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="a folder on its path is a file"):
        with atomic_dir(tmp_path / "file" / "data"):
            pass


def test_workers_default_to_the_usable_cores_capped_unless_given():
    cores = len(os.sched_getaffinity(0))
    assert usable_cores() == cores
    assert DataModule(batch_size=1).workers() == min(4, cores)
    assert DataModule(batch_size=1, num_workers=0).workers() == 0
    threads = type("Threads", (DataModule,), {"default_worker_cap": None})
    assert threads(batch_size=1).workers() == cores
