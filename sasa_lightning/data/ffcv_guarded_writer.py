"""FFCV's DatasetWriter, made to stop when a worker dies.

FFCV 1.0.2's `_write_common` starts its worker processes, then polls a shared counter until every
sample is written: when a worker dies (an image that does not decode, a full disk) the counter
never gets there and the writer waits forever, with the worker's traceback on the screen and its
metadata in shared memory until the process is killed. This is the same method with the
workers watched: a worker reports the error that stopped it on a queue and exits quietly, the
writer then stops the others, frees the shared memory, and raises that error; an interrupt
(Ctrl-C, SIGTERM) does the same cleanup on its way out. Nothing of it can outlive the writer:
the work queue is not waited for at exit, and the shared memory has no name in /dev/shm.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import multiprocessing
import os
import queue
import signal
from multiprocessing.queues import Queue
from time import sleep

from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import DatasetWriter

from .errors import DataError
from .write_progress import WriteProgress

POLL_SECONDS = 0.1
# Forked workers inherit the metadata's shared memory already mapped, so its name can leave
# /dev/shm before they start (prepare below), whatever start method the process has set.
_FORK = multiprocessing.get_context("fork")


class WorkerFailed(Exception):
    """What stopped a writer worker, sent back to the parent as plain values."""


def _die_with_parent() -> None:
    """A parent killed outright (SIGKILL) cannot stop its workers; the kernel does it then."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 9)
    except (OSError, AttributeError):  # not Linux: the worker outlives a killed parent
        pass


def _guarded(report: Queue, work_fn, *args) -> None:
    # Only the parent handles Ctrl-C, and SIGTERM ends a worker at once: an exception raised in
    # one would run FFCV's allocator exit, which spins forever waiting for the turn of a page
    # that a dead worker will never write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        _die_with_parent()
        work_fn(*args)
    except BaseException as error:  # a worker has no one to show a traceback to; the parent reports it
        if isinstance(error, OSError) and error.errno is not None:
            report.put(("os", error.errno, error.strerror, error.filename))
        elif isinstance(error, DataError):
            report.put(("data", None, str(error), None))
        else:
            report.put(("bug", None, f"{type(error).__name__}: {error}", None))
        report.close()
        report.join_thread()
        os._exit(1)


def _raise_reported(kind: str, code: int | None, message: str, filename: str | None) -> None:
    if kind == "os":
        raise OSError(code or errno_codes.EIO, message, filename)
    if kind == "data":
        raise DataError(message)
    raise WorkerFailed(f"an FFCV writer worker failed: {message}")


class GuardedDatasetWriter(DatasetWriter):
    def prepare(self) -> None:
        super().prepare()
        # The mapping lives on in this process and its workers and dies with the last of them:
        # a writer killed outright (SIGKILL) leaves no segment behind that nothing would remove.
        self.metadata_sm.unlink()

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        self.num_samples = num_samples
        self.prepare()
        try:
            workqueue: Queue = _FORK.Queue()
            # All the work is queued up front, more than a pipe holds (3,000 images are 30 chunks of
            # 100 (index, numpy int) pairs, about 360 KB): after an interrupt no worker reads the
            # rest, and at exit multiprocessing would wait forever for the thread that feeds it.
            workqueue.cancel_join_thread()
            for todo in queue_content:
                workqueue.put(todo)
            for _ in range(self.num_workers):
                workqueue.put(None)
            allocations_queue: Queue = _FORK.Queue()
            report: Queue = _FORK.Queue()
            done_number = _FORK.Value(ctypes.c_uint64, 0)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            worker_args = (workqueue, self.metadata_sm, self.metadata_type, self.fields, allocator, done_number,
                           allocations_queue, *extra_worker_args)
            processes = [_FORK.Process(target=_guarded, args=(report, work_fn, *worker_args)) for _ in range(self.num_workers)]
            try:
                for process in processes:
                    process.start()
                allocation_list = self._wait(processes, report, allocations_queue, done_number)
            finally:
                for process in processes:
                    if process.is_alive():
                        process.terminate()
                for process in processes:
                    if process.pid is not None:
                        process.join()
            self.finalize(allocation_list)
        finally:
            self.metadata_sm.close()

    def _wait(self, processes, report, allocations_queue, done_number) -> list:
        """The workers' allocations once all samples are written; the first worker's error if one dies."""
        progress = WriteProgress(self.num_samples)
        allocations, finished = [], 0
        try:
            while finished < len(processes):
                try:
                    _raise_reported(*report.get_nowait())
                except queue.Empty:
                    pass
                try:
                    allocations.extend(allocations_queue.get(timeout=POLL_SECONDS))
                    finished += 1
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in processes) and report.empty():
                        sleep(POLL_SECONDS)  # its report may still be in flight
                        if report.empty():
                            code = next(p.exitcode for p in processes if p.exitcode not in (None, 0))
                            raise WorkerFailed(f"an FFCV writer worker ended with exit code {code} without a report")
                progress.update(done_number.value)
        finally:
            progress.close()
        return allocations
