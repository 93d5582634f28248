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


def sasa(*args, cache, timeout=600):
    """Run the real command (Lightning's DDP launcher re-executes it for every extra process)."""
    env = dict(os.environ, SASA_CACHE=str(cache), PYTHONUNBUFFERED="1")
    result = subprocess.run([sys.executable, "-m", "sasa_lightning.cli", *args], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


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
    sasa("fit", *QUICK, "--trainer.devices", "2", "--config", str(ROOT / "configs/strategy/ddp.yaml"),
         "--trainer.default_root_dir", str(run), cache=cache)
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
    sasa("fit", *QUICK, *zero2, cache=tmp_path / "cache")
    result = sasa("fit", *QUICK, *zero2, "--trainer.max_epochs", "2", "--ckpt_path", "last", cache=tmp_path / "cache")
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
