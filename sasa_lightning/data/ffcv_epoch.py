"""FFCV's epoch iterator, made to stop its thread for good whenever an epoch's use ends.

FFCV 1.0.2 reads each epoch in an `EpochIterator`, a daemon thread that nothing joins: its
`close()` only sets a flag, which the thread reads when its output queue is full, so after an
epoch cut short (limit_*_batches, an exception, the end of fit) it goes on decoding batches for a
while. A daemon thread still alive at interpreter exit is ended by `pthread_exit` when it next
takes the GIL; if that happens inside a torch call that released the GIL (FFCV's ToTorchImage
copies), the forced unwind crosses a C++ destructor and libstdc++ calls std::terminate: `sasa fit`
printed its summary, then died with SIGABRT ("terminate called without an active exception").

`JoinedEpochIterator.close()` makes the thread stop starting batches, drains the queue it may be
blocked on, joins it, and only then releases FFCV's memory context. `EpochLoader` calls it when an
epoch's use ends, and an atexit handler calls it for any iterator still open, so no FFCV thread is
alive when the interpreter finalises.
"""

from __future__ import annotations

import atexit
import queue
import threading
import weakref

from ffcv.loader.epoch_iterator import EpochIterator

_OPEN: weakref.WeakSet = weakref.WeakSet()


class JoinedEpochIterator(EpochIterator):
    def __init__(self, loader, order) -> None:
        super().__init__(loader, order)  # starts the thread
        _OPEN.add(self)

    def close(self) -> None:
        self.terminate_event.set()
        if threading.current_thread() is not self:
            # No further batch is started: the thread's next() ends its loop, and the put of its
            # end marker, or of a batch, returns once the queue has room.
            self.iter_ixes = iter(())
            while self.is_alive():
                try:
                    while True:
                        self.output_queue.get_nowait()
                except queue.Empty:
                    pass
                self.join(timeout=0.05)
        if not self.closed:
            self.closed = True
            self.memory_context.__exit__(None, None, None)
        _OPEN.discard(self)


@atexit.register
def close_open_iterators() -> None:
    for iterator in list(_OPEN):
        iterator.close()
