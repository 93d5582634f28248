"""Real multi-process training on CPU: DDP and DeepSpeed with 2 processes (gloo), and the samplers."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sasa_lightning.data.image_folder import EpochSeededSampler

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "--config", str(ROOT / "configs/demo/digits.yaml"),
    "--model.init_args.model_options", '{"kernel_size": 3, "attention_stages": [4]}',
    "--data.init_args.batch_size", "16",
    "--data.init_args.num_workers", "1",
    "--trainer.limit_train_batches", "3",
    "--trainer.max_epochs", "1",
    "--trainer.enable_model_summary", "false",
]


def sasa(*args, cache, timeout=600, probe_exit=False, **env_vars):
    """Run the real command (Lightning's DDP launcher re-executes it for every extra process);
    with probe_exit, through tests/helpers/exit_probe.py, which reports each process's gloo threads at exit."""
    env = dict(os.environ, SASA_CACHE=str(cache), PYTHONUNBUFFERED="1", **env_vars)
    command = [str(ROOT / "tests" / "helpers" / "exit_probe.py")] if probe_exit else ["-m", "sasa_lightning.cli"]
    result = subprocess.run([sys.executable, *command, *args], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def assert_process_groups_ended(result, processes=2):
    """Every rank destroyed its process group before the interpreter finalised: a gloo thread still
    running then can abort the finished run (sasa_lightning/distributed/process_group.py)."""
    reports = [line for line in result.stderr.splitlines() if line.startswith("process-group threads at exit:")]
    assert reports == ["process-group threads at exit: 0"] * processes, reports


def logged(root, key):
    values = []
    for version in sorted((Path(root) / "logs").glob("version_*")):
        with (version / "metrics.csv").open() as file:
            values += [float(row[key]) for row in csv.DictReader(file) if row.get(key)]
    return values


def test_training_shards_are_disjoint_and_augmentation_ignores_the_world_size():
    dataset = list(range(10))
    shards = [list(EpochSeededSampler(dataset, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    indices = [i for shard in shards for i, _ in shard]
    assert len(indices) == len(set(indices)) == 10
    alone = dict(EpochSeededSampler(dataset, seed=3))
    assert all(alone[i] == s for shard in shards for i, s in shard)  # the same seed per image


@pytest.mark.slow
def test_ddp_two_processes_validate_every_sample_once(tmp_path):
    cache = tmp_path / "cache"
    run = tmp_path / "ddp"
    fit = sasa("fit", *QUICK, "--trainer.devices", "2", "--config", str(ROOT / "configs/strategy/ddp.yaml"),
               "--trainer.default_root_dir", str(run), cache=cache, probe_exit=True)
    assert_process_groups_ended(fit)
    two_processes = logged(run, "val/acc1")[-1]
    sasa("validate", *QUICK, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
         "--trainer.default_root_dir", str(tmp_path / "single"), cache=cache)
    assert logged(tmp_path / "single", "val/acc1")[-1] == pytest.approx(two_processes, abs=1e-6)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3  # 3 batches of 16 per process: the two processes split each step's 32


@pytest.mark.slow
def test_deepspeed_zero2_trains_resumes_and_its_export_evaluates_the_same(tmp_path):
    run = tmp_path / "zero2"
    zero2 = ["--trainer.devices", "2", "--config", str(ROOT / "configs/strategy/deepspeed_zero2.yaml"),
             "--trainer.default_root_dir", str(run)]
    assert_process_groups_ended(sasa("fit", *QUICK, *zero2, cache=tmp_path / "cache", probe_exit=True))
    # DeepSpeed leaves each process its own batch-norm statistics; validation must use rank 0's.
    probe = ["--trainer.callbacks+=helpers.buffer_probe.BufferProbe"]
    result = sasa("fit", *QUICK, *zero2, *probe, "--trainer.max_epochs", "2", "--ckpt_path", "last",
                  cache=tmp_path / "cache", PYTHONPATH=str(ROOT / "tests"))
    assert (run / "buffers_step6_rank0.txt").read_text() == (run / "buffers_step6_rank1.txt").read_text()
    assert "Restored all states from the checkpoint" in result.stdout + result.stderr
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_dir(), result.stdout[-2000:]  # DeepSpeed writes a directory of shards
    assert list(checkpoint.rglob("*optim_states.pt"))
    live = logged(run, "val/acc1")[-1]

    exported = tmp_path / "exported.ckpt"
    sasa("export", str(checkpoint), str(exported), cache=tmp_path / "cache")
    exported_state = torch.load(exported, weights_only=True)
    assert set(exported_state) >= {"state_dict", "hyper_parameters"}
    assert exported_state["global_step"] == 6  # resumed: 3 steps in each of 2 epochs
    sasa("validate", *QUICK, "--ckpt_path", str(exported), "--trainer.default_root_dir", str(tmp_path / "single"),
         cache=tmp_path / "cache")
    assert logged(tmp_path / "single", "val/acc1")[-1] == pytest.approx(live, abs=1e-6)


def test_deepspeed_config_check_knows_what_deepspeed_reads():
    from sasa_lightning.distributed.deepspeed import check_deepspeed_config

    # Keys DeepSpeed reads in different ways: scalars, pydantic sections, monitor sections, batch sizes.
    check_deepspeed_config({"zero_optimization": {"stage": 2}, "tensorboard": {"enabled": False}, "bf16": {"enabled": True},
                            "train_batch_size": 256, "gradient_clipping": 1.0, "zero_allow_untested_optimizer": True})
    with pytest.raises(ValueError, match=r"'zero_optimisation' .*did you mean 'zero_optimization'"):
        check_deepspeed_config({"zero_optimisation": {"stage": 2}})
    with pytest.raises(ValueError, match="stag"):  # inside a section: DeepSpeed's own models refuse it
        check_deepspeed_config({"zero_optimization": {"stag": 2}})


@pytest.mark.slow
def test_an_unknown_deepspeed_key_in_a_json_config_is_one_line_and_exit_2(tmp_path):
    ds_config = tmp_path / "ds.json"
    ds_config.write_text('{"zero_allow_untested_optimizer": true, "zero_optimization": {"stage": 2}, "gradient_clipp": 1}')
    env = dict(os.environ, SASA_CACHE=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-m", "sasa_lightning.cli", "fit", "--config", str(ROOT / "configs/demo/digits.yaml"),
         "--trainer.strategy", "sasa_lightning.distributed.DeepSpeedStrategy",
         "--trainer.strategy.config", str(ds_config), "--trainer.default_root_dir", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sasa: error: DeepSpeed config key 'gradient_clipp'") and "'gradient_clipping'" in last
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("script", ["train.sbatch", "multinode.sbatch", "ablation_array.sbatch"])
def test_the_sbatch_scripts_refuse_to_run_outside_slurm(script):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    result = subprocess.run(["bash", str(ROOT / "slurm" / script), "configs/demo/digits.yaml"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("sasa slurm: not ") and "sbatch" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_sigusr1_outside_slurm_checkpoints_mid_epoch_and_the_resumed_run_is_identical(tmp_path):
    """The preemption path without a scheduler: stop on SIGUSR1, then `--ckpt_path last` resumes mid-epoch."""
    import signal
    import time

    deterministic = [*QUICK, "--data.init_args.scale", "[1.0, 1.0]", "--data.init_args.ratio", "[1.0, 1.0]",
                     "--trainer.deterministic", "true", "--trainer.limit_train_batches", "12",
                     "--trainer.limit_val_batches", "2", "--trainer.max_epochs", "3"]
    sasa("fit", *deterministic, "--trainer.default_root_dir", str(tmp_path / "straight"), cache=tmp_path / "cache")

    run = tmp_path / "stopped"
    env = dict(os.environ, SASA_CACHE=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    process = subprocess.Popen([sys.executable, "-m", "sasa_lightning.cli", "fit", *deterministic,
                                "--trainer.default_root_dir", str(run)], env=env, cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (run / "checkpoints" / "last.ckpt").exists():  # the first epoch is done
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.2)
    process.send_signal(signal.SIGUSR1)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0 and "sasa: preempted: saved" in output, output[-3000:]
    stopped = torch.load(run / "checkpoints" / "last-preempted.ckpt", weights_only=True)
    assert 12 < stopped["global_step"] < 36

    result = sasa("fit", *deterministic, "--trainer.default_root_dir", str(run), "--ckpt_path", "last", cache=tmp_path / "cache")
    assert "last-preempted.ckpt" in result.stdout + result.stderr
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in straight["state_dict"])
    rows = lambda root: [{k: v for k, v in r.items() if v and k != "train/images_per_s"}
                         for v in sorted((root / "logs").glob("version_*"))
                         for r in csv.DictReader((v / "metrics.csv").open()) if r.get("val/acc1") or r.get("train/loss_epoch")]
    assert rows(run) == rows(tmp_path / "straight")


def test_launch_refuses_a_job_with_other_than_one_task_per_gpu():
    env = dict(os.environ, SLURM_JOB_ID="7", SLURM_SUBMIT_DIR=str(ROOT), SLURM_GPUS_ON_NODE="8", SLURM_NTASKS_PER_NODE="1",
               SLURM_JOB_NUM_NODES="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", str(ROOT / "slurm" / "launch.sh"), "configs/demo/digits.yaml"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == ("sasa slurm: one task per GPU: the job has 8 GPUs per node but --ntasks-per-node=1; "
                                     "give both the same number")
