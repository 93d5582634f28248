"""No FFCV reader thread outlives the use of its epoch, nor reaches interpreter exit.

A daemon thread alive at exit is ended by pthread_exit inside whatever torch call it is in, and
that aborts the process (see sasa_lightning/data/ffcv_epoch.py)."""

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from sasa_lightning.data import FFCVImageNet, write_ffcv

from test_data import make_image_folder

ROOT = Path(__file__).resolve().parents[1]


def ffcv_threads():
    from ffcv.loader.epoch_iterator import EpochIterator

    return [t for t in threading.enumerate() if isinstance(t, EpochIterator) and t.is_alive()]


@pytest.fixture(scope="module")
def many_images(tmp_path_factory):
    """Enough batches that the reader thread is still busy when its epoch is cut short."""
    root = tmp_path_factory.mktemp("threads")
    folder = make_image_folder(root / "images", classes=2, per_class=100, size=32)
    return write_ffcv(folder, root / "train.beton", max_resolution=32, num_workers=1)


def module(path):
    m = FFCVImageNet(str(path), str(path), num_classes=2, batch_size=2, num_workers=1, resolution=32, val_resolution=32,
                     val_crop_ratio=1.0)
    m.setup("fit")
    return m


@pytest.mark.slow
def test_an_epoch_cut_short_joins_its_reader_thread(many_images):
    for loader in (module(many_images).train_dataloader(), module(many_images).val_dataloader()):
        batches = iter(loader)
        next(batches)
        assert ffcv_threads(), "the reader thread runs while the epoch is in use"
        batches.close()  # what happens when Lightning stops at limit_train_batches
        assert not ffcv_threads()


def test_an_epoch_read_to_its_end_leaves_no_thread(many_images):
    assert sum(len(x) for x, _ in module(many_images).val_dataloader()) == 200
    assert not ffcv_threads()


@pytest.mark.slow
def test_an_iterator_left_open_is_joined_before_the_interpreter_finalises(many_images):
    """The process abandons an epoch mid-way; an atexit hook registered before ours runs after
    it (atexit is last in, first out) and sees what is still alive when finalisation begins."""
    script = textwrap.dedent(f"""
        import atexit, sys, threading
        def report():
            from ffcv.loader.epoch_iterator import EpochIterator
            alive = [t for t in threading.enumerate() if isinstance(t, EpochIterator) and t.is_alive()]
            print("alive at exit:", len(alive), flush=True)
        atexit.register(report)
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from test_ffcv_threads import module
        batches = iter(module({str(many_images)!r}).train_dataloader())
        next(batches)
        kept = batches  # never closed, as when a run ends with an exception
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "alive at exit: 0" in result.stdout, result.stdout + result.stderr[-2000:]
