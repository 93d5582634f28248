"""The sbatch scripts on a real one-node SLURM cluster (slurm/local_cluster.sh), CPU tasks under DDP.

The cluster is started once for the module and stopped afterwards, even when a test fails.
"""

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local_cluster.sh"

# The demo, shortened for CI: attention in the last stage, 4 epochs, two processes of 32 images
# (the demo's global batch of 64). Crops cover the whole image, so the run is deterministic
# (FFCV's crop draws cannot be seeded) and a preempted run can be compared bit for bit.
DEMO = [
    "configs/demo/digits.yaml",
    "--model.init_args.model_options", '{"kernel_size": 3, "attention_stages": [4]}',
    "--data.init_args.batch_size", "32",
    "--data.init_args.num_workers", "1",
    "--data.init_args.scale", "[1.0, 1.0]",
    "--data.init_args.ratio", "[1.0, 1.0]",
    "--trainer.deterministic", "true",
    "--trainer.enable_model_summary", "false",
    "--trainer.max_epochs", "4",
]
QUICK = DEMO[:-2] + ["--trainer.max_epochs", "2", "--trainer.limit_train_batches", "4"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("slurmctld") is None, reason="slurm-wlm is not installed (make slurm-packages)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the local SLURM cluster runs as root"),
]


def free_port_pair() -> int:
    """A port p with p and p + 1 free (slurmctld, slurmd), so a cluster already running is not disturbed."""
    while True:
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        if port < 65535:
            with socket.socket() as second:
                try:
                    second.bind(("", port + 1))
                    return port
                except OSError:
                    continue


class Cluster:
    def __init__(self, state: Path, work: Path) -> None:
        self.work = work
        self.env = dict(
            os.environ,
            SASA_SLURM_DIR=str(state),
            SASA_SLURM_PORT=str(free_port_pair()),
            SLURM_CONF=str(state / "slurm.conf"),
            SASA_CACHE=str(work / "cache"),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            PYTHONUNBUFFERED="1",
        )
        for name in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_")) and k != "SLURM_CONF"]:
            del self.env[name]  # in case the tests themselves run inside a SLURM job

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, cwd=ROOT, timeout=120)
        assert not check or result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
        return result

    def submit(self, script: str, *args: str, tasks: int = 2) -> str:
        output = self.work / "%j.out"
        result = self.run("sbatch", "--parsable", f"--ntasks-per-node={tasks}", f"--output={output}", script, *args)
        return result.stdout.strip().split(";")[0]

    def state(self, job: str) -> str:
        fields = self.run("scontrol", "show", "job", job).stdout.split()
        return next(f.split("=", 1)[1] for f in fields if f.startswith("JobState="))

    def wait(self, job: str, until=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), timeout=900) -> str:
        deadline = time.monotonic() + timeout
        while (state := self.state(job)) not in until:
            assert time.monotonic() < deadline, f"job {job} still {state} after {timeout} s:\n{self.log(job)[-3000:]}"
            time.sleep(1)
        return state

    def log(self, job: str) -> str:
        path = self.work / f"{job}.out"
        return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # A short state path: munge's socket path must fit in a sockaddr_un (108 bytes).
    state = Path(tempfile.gettempdir()) / f"sasa-slurm-test-{os.getpid()}"
    cluster = Cluster(state, tmp_path_factory.mktemp("slurm"))
    try:
        cluster.run(str(CLUSTER), "start")
        yield cluster
    finally:
        cluster.run(str(CLUSTER), "stop", check=False)


def wait_for(path: Path, job: str, cluster: Cluster, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert cluster.state(job) in ("PENDING", "RUNNING", "CONFIGURING"), cluster.log(job)[-3000:]
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.5)


def metrics(run: Path) -> list[dict]:
    """Every logged epoch-level row of a run (all versions, i.e. across restarts), in order."""
    rows = []
    for version in sorted((run / "logs").glob("version_*")):
        with (version / "metrics.csv").open() as file:
            rows += [
                {k: v for k, v in row.items() if v and (k.startswith("val/") or k.endswith("_epoch") or k == "epoch")}
                for row in csv.DictReader(file)
                if row.get("val/acc1") or row.get("train/loss_epoch")
            ]
    return rows


def val_accuracy(run: Path) -> float:
    return float([row for row in metrics(run) if "val/acc1" in row][-1]["val/acc1"])


def weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(cluster):
    run = cluster.work / "uninterrupted"
    job = cluster.submit("slurm/train.sbatch", *DEMO, "--trainer.default_root_dir", str(run))
    assert cluster.wait(job) == "COMPLETED", cluster.log(job)[-3000:]
    return run, cluster.log(job)


def test_train_sbatch_trains_the_demo_under_ddp_with_two_tasks(uninterrupted):
    run, log = uninterrupted
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in log
    assert "1 node(s) x 2 cpu process(es)" in log
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 4 * (1437 // 64)  # 4 epochs of the 1,437 training digits, 2 x 32 per step
    assert val_accuracy(run) > 0.85, log[-2000:]  # measured: 0.936 after 4 epochs (92 s of training)


def test_preempted_job_requeues_resumes_and_matches_the_uninterrupted_run(cluster, uninterrupted):
    run = cluster.work / "preempted"
    job = cluster.submit("slurm/train.sbatch", *DEMO, "--trainer.default_root_dir", str(run))
    wait_for(run / "checkpoints" / "last.ckpt", job, cluster)  # the first epoch is done
    cluster.run("scancel", "--signal=USR1", job)  # what --signal=SIGUSR1@90 sends before the time limit
    cluster.wait(job, until=("PENDING",), timeout=300)
    preempted = torch.load(run / "checkpoints" / "last-preempted.ckpt", weights_only=True)
    # The scheduler starts it again once its previous run's credential has expired (cred_expire,
    # 10 s on the local cluster). Forcing an earlier start (scontrol update StartTime=now) raced
    # slurmd: about one run in ten, the launch was refused and the job ended FAILED with no output.
    assert cluster.wait(job) == "COMPLETED", cluster.log(job)[-3000:]

    log = cluster.log(job)
    assert f"requeueing SLURM job {job}; it resumes from there" in log and "(restart 1)" in log
    assert f"Restored all states from the checkpoint at {run / 'checkpoints' / 'last-preempted.ckpt'}" in log
    assert 0 < preempted["global_step"] < 4 * 22
    reference, resumed = weights(uninterrupted[0] / "checkpoints" / "last.ckpt"), weights(run / "checkpoints" / "last.ckpt")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    assert metrics(run) == metrics(uninterrupted[0])


def test_deepspeed_zero2_job_checkpoints_and_its_export_evaluates_the_same(cluster):
    run = cluster.work / "zero2"
    job = cluster.submit("slurm/train.sbatch", *QUICK, "--config", "configs/strategy/deepspeed_zero2.yaml",
                         "--trainer.default_root_dir", str(run))
    assert cluster.wait(job) == "COMPLETED", cluster.log(job)[-3000:]
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_dir() and list(checkpoint.rglob("*optim_states.pt"))  # DeepSpeed's sharded layout
    live = val_accuracy(run)

    exported = cluster.work / "zero2.ckpt"
    cluster.run("sasa", "export", str(checkpoint), str(exported))
    cluster.run("sasa", "validate", "--config", QUICK[0], *QUICK[1:], "--ckpt_path", str(exported),
                "--trainer.default_root_dir", str(cluster.work / "zero2-validate"))
    assert val_accuracy(cluster.work / "zero2-validate") == pytest.approx(live, abs=1e-6)


def rank_pid(cluster: Cluster, job: str, rank: int) -> int:
    """The pid of the job's task with SLURM_PROCID == rank (a python process started by srun)."""
    for pid in cluster.run("scontrol", "listpids", job).stdout.split()[5::5]:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if f"SLURM_PROCID={rank}".encode() in environ and b"sasa" in command and b"srun" not in command:
            return int(pid)
    raise AssertionError(f"no rank {rank} among job {job}'s processes")


def test_a_killed_rank_fails_the_job_quickly_and_a_resubmission_resumes(cluster):
    run = cluster.work / "killed"
    args = (*DEMO, "--trainer.default_root_dir", str(run))
    job = cluster.submit("slurm/train.sbatch", *args)
    last = run / "checkpoints" / "last.ckpt"
    wait_for(last, job, cluster)
    os.kill(rank_pid(cluster, job, rank=1), signal.SIGKILL)
    killed = time.monotonic()
    assert cluster.wait(job, timeout=120) == "FAILED"
    assert time.monotonic() - killed < 60  # srun --kill-on-bad-exit ends rank 0, which would wait forever
    intact = torch.load(last, weights_only=True)  # the last complete checkpoint survived
    assert intact["global_step"] % 22 == 0 and intact["global_step"] > 0

    again = cluster.submit("slurm/train.sbatch", *args)
    assert cluster.wait(again) == "COMPLETED", cluster.log(again)[-3000:]
    assert f"Restored all states from the checkpoint at {last}" in cluster.log(again)
    assert torch.load(last, weights_only=True)["global_step"] == 4 * 22


def test_devices_that_do_not_match_the_tasks_per_node_fail_with_one_line(cluster):
    job = cluster.submit("slurm/train.sbatch", *QUICK, "--trainer.devices", "1",
                         "--trainer.default_root_dir", str(cluster.work / "mismatch"))
    assert cluster.wait(job, timeout=300) == "FAILED"
    errors = [line for line in cluster.log(job).splitlines() if line.startswith("sasa: error:")]
    assert errors and "devices=1" in errors[0] and "--ntasks-per-node=2" in errors[0], cluster.log(job)[-2000:]


def test_array_script_runs_the_ablation_its_index_selects(cluster):
    """Index 0 is configs/ablations' first config; shrunk to one step on the digits to run here."""
    first = sorted((ROOT / "configs" / "ablations").glob("*.yaml"))[0]
    run = cluster.work / "array"
    output = cluster.work / "array-%A_%a.out"
    job = cluster.run(
        "sbatch", "--parsable", "--array=0", "--ntasks-per-node=1", f"--output={output}", "slurm/ablation_array.sbatch",
        "--config", "configs/demo/digits.yaml", "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(run),
    ).stdout.strip()
    state = cluster.wait(f"{job}_0")
    log = (cluster.work / f"array-{job}_0.out").read_text()
    assert state == "COMPLETED", log[-3000:]
    assert f"config configs/ablations/{first.name}" in log
