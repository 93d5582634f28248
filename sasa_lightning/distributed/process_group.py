"""Ending the process groups while the interpreter is still whole.

Lightning destroys the process group at exit only for NCCL, so after a DDP or DeepSpeed run on
CPU (gloo) the groups live until the interpreter finalises. Gloo's worker threads drop their
reference to a finished collective after the caller's wait() has returned; if the main thread is
already finalising the interpreter by then, freeing the collective's tensors takes the GIL, Python
3.11 ends the thread with pthread_exit there, and the forced unwind through the C++ destructor
calls std::terminate: the run printed its summary, then died with SIGABRT ("terminate called
without an active exception"; a core dump shows ProcessGroupGloo::runLoop ->
~AsyncAllreduceWork -> decref_pyobject -> take_gil -> pthread_exit).

A group's threads are joined only when its last reference goes. torch's destroy_process_group
drops torch's references; DeepSpeed keeps its own: its groups module (which DeepSpeed's own
destroy_process_group releases), and the engine and an attribute on every parameter, which go
with the run's objects once those are garbage. For that the engine is destroyed at teardown
(deepspeed.py) and the CLI runs in a context of its own (cli.py).
"""

from __future__ import annotations

import gc
import sys

import torch.distributed as dist


def end_process_groups() -> None:
    """Destroy every process group and join their threads. Call it once a run has ended normally on
    every rank, after the run's objects are out of reach: after a failure another rank may still be
    inside a collective with this one, and destroying then can wait for the collective's timeout
    (torchtitan destroys on success only)."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    deepspeed_comm = sys.modules.get("deepspeed.comm")
    if deepspeed_comm is not None and deepspeed_comm.is_initialized():
        deepspeed_comm.destroy_process_group()  # also drops DeepSpeed's module-level references
    else:
        dist.destroy_process_group()
    gc.collect()  # groups still held in the finished run's reference cycles
