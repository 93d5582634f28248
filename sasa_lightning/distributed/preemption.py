"""Preemption: on SLURM's warning signal, checkpoint at a step boundary, requeue the job, and exit.

`#SBATCH --signal=SIGUSR1@90` asks SLURM to send SIGUSR1 to every task 90 s before the time
limit (`scancel --signal=USR1 <job>` sends it by hand). Lightning's own handler saves a
checkpoint inside the signal handler, wherever each rank happens to be: in the middle of an
optimizer step, or with the ranks at different steps and about to enter different collectives.
Here the handler only raises a flag; at the end of each training step the ranks agree on it
(one all-reduce), all save the same step's state to checkpoints/last-preempted.ckpt, rank 0
runs `scontrol requeue`, and every rank exits. The requeued job runs the same command with
`--ckpt_path last`, which picks the newest last*.ckpt, and the data loaders skip the batches
the epoch has already trained on: the run goes on as if it had never stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

from ..compat import cluster_environment, is_last_batch

CHECKPOINT_NAME = "last-preempted.ckpt"


class Preempted(Exception):
    """Raised on every rank once the preemption checkpoint is saved (and the job requeued)."""

    def __init__(self, checkpoint: str, requeued: str | None) -> None:
        self.checkpoint, self.requeued = checkpoint, requeued
        then = f"requeueing SLURM job {requeued}; it resumes from there" if requeued else "resume with --ckpt_path last"
        super().__init__(f"preempted: saved {checkpoint}; {then}")


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: <array job>_<task> for an array task, else the job id."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_job:
        return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def requeue(job_id: str) -> None:
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"scontrol requeue {job_id} failed: {result.stderr.strip() or result.stdout.strip()}")


class Preemption(L.Callback):
    """Turns `signum` (SIGUSR1) during fit into a checkpoint, a requeue under SLURM, and an exit.

    Outside SLURM the same signal saves the checkpoint and exits without requeueing, which is
    how a run can be stopped and resumed by hand.
    """

    def __init__(self, signum: int = int(signal.SIGUSR1)) -> None:  # a plain int, written as such in configs
        self.signum = signum
        self.received = False
        self._previous = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.received = False
        # Installed before the trainer registers its own signal handlers, which then leave an
        # existing SIGUSR1 handler alone. Lightning's SLURM auto-requeue is switched off too, or
        # its SIGTERM handler would swallow the scheduler's termination after our requeue.
        self._previous = signal.signal(self.signum, self._on_signal)
        environment = cluster_environment(trainer)
        if isinstance(environment, SLURMEnvironment):
            environment.auto_requeue = False

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def _on_signal(self, signum, frame) -> None:
        self.received = True  # only a flag: saving here could interrupt a step or a collective

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # The last batch of an epoch is left to on_train_epoch_end, after that epoch's validation,
        # so the resumed run does not skip it.
        if not is_last_batch(trainer):
            self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._stop_if_signalled(trainer)

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        if not trainer.strategy.reduce_boolean_decision(self.received, all=False):
            return
        path = os.path.join(self._directory(trainer), CHECKPOINT_NAME)
        trainer.save_checkpoint(path)
        trainer.strategy.barrier("preemption checkpoint")
        job = slurm_job_id() if SLURMEnvironment.detect() else None
        stop = Preempted(path, job)
        if job:
            # After the requeue the scheduler terminates the job; its SIGTERM may now simply end
            # every rank (Lightning's handler would try a collective with ranks already gone).
            # That can come before any rank exits, so rank 0 says what happened first.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if trainer.is_global_zero:
                print(f"sasa: {stop}", file=sys.stderr, flush=True)
                requeue(job)
        raise stop

    @staticmethod
    def _directory(trainer: L.Trainer) -> str:
        """Beside last.ckpt, where `--ckpt_path last` looks."""
        for callback in trainer.checkpoint_callbacks:
            if callback.dirpath:
                return str(callback.dirpath)
        return os.path.join(trainer.default_root_dir, "checkpoints")
