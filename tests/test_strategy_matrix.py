"""Every shipped strategy config x precision x EMA, as a user composes them: a real `sasa fit` of a
few steps and one validation on CPU, then the checkpoint read back (exported first where it is a
DeepSpeed directory) by `sasa validate`, which must score what the run scored, with EMA weights
that stayed float32 and moved away from their initialisation."""

import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from sasa_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = sorted(p.stem for p in (ROOT / "configs/strategy").glob("*.yaml"))
MODEL_OPTIONS = '{"kernel_size": 3, "attention_stages": [4]}'
QUICK = [
    "--config", str(ROOT / "configs/demo/digits.yaml"),
    "--model.init_args.model_options", MODEL_OPTIONS,
    "--data.init_args.batch_size", "16",
    "--data.init_args.num_workers", "1",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "2",
    "--trainer.max_epochs", "1",
    "--trainer.num_sanity_val_steps", "0",
    "--trainer.enable_model_summary", "false",
]


def cases():
    """EMA on wherever the strategy allows it (ZeRO-3 partitions the weights it averages), and off
    once more where bf16 DeepSpeed once failed both ways; 2 processes for DDP and one DeepSpeed."""
    for strategy in STRATEGIES:
        for precision in ("32-true", "bf16-mixed"):
            yield strategy, precision, strategy != "deepspeed_zero3", 1
    yield "deepspeed_zero2", "bf16-mixed", False, 1
    yield "ddp", "bf16-mixed", True, 2
    yield "deepspeed_zero2", "bf16-mixed", True, 2


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def logged(root: Path, key: str) -> list[float]:
    values = []
    for version in sorted((root / "logs").glob("version_*")):
        with (version / "metrics.csv").open() as file:
            values += [float(row[key]) for row in csv.DictReader(file) if row.get(key)]
    return values


def initial_ema_weights(ema: bool) -> dict[str, torch.Tensor]:
    """The task as the CLI builds it (seed_everything(0) from the config, then the model)."""
    from sasa_lightning.tasks import ImageClassifier

    L.seed_everything(0)
    import json

    task = ImageClassifier(model="sasa_resnet26", num_classes=10, model_options=json.loads(MODEL_OPTIONS),
                           ema_decay=0.99 if ema else None)
    return {k: v for k, v in task.state_dict().items() if k.startswith("ema.module.")}


@pytest.mark.slow
@pytest.mark.parametrize("strategy, precision, ema, devices", [
    pytest.param(*case, id=f"{case[0]}-{case[1]}-{'ema' if case[2] else 'no_ema'}-{case[3]}proc") for case in cases()])
def test_strategy_precision_ema(strategy, precision, ema, devices, cache, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # With 2 processes each validates its share: all of the split, so that one process sees the same images.
    every_image = ["--trainer.limit_val_batches", "1.0"] if devices > 1 else []
    command = [sys.executable, "-m", "sasa_lightning.cli", "fit", *QUICK, *every_image,
               "--config", str(ROOT / "configs/strategy" / f"{strategy}.yaml"),
               "--trainer.precision", precision, "--trainer.devices", str(devices),
               "--trainer.default_root_dir", str(run)]
    if not ema:
        command += ["--model.init_args.ema_decay", "null"]
    env = dict(os.environ, SASA_CACHE=str(cache))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    losses = logged(run, "train/loss_epoch")
    assert losses and all(math.isfinite(loss) for loss in losses)
    live = logged(run, "val/acc1")[-1]

    checkpoint = run / "checkpoints" / "last.ckpt"
    assert checkpoint.is_dir() == strategy.startswith("deepspeed")
    if checkpoint.is_dir():
        assert main(["export", str(checkpoint), str(tmp_path / "exported.ckpt")]) == 0
        checkpoint = tmp_path / "exported.ckpt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["global_step"] == 3  # 3 batches per process

    monkeypatch.setenv("SASA_CACHE", str(cache))
    validate = ["validate", *QUICK, *every_image, "--ckpt_path", str(checkpoint), "--trainer.precision", precision,
                "--trainer.default_root_dir", str(tmp_path / "validated")]
    if not ema:
        validate += ["--model.init_args.ema_decay", "null"]
    assert main(validate) == 0
    assert logged(tmp_path / "validated", "val/acc1")[-1] == pytest.approx(live, abs=1e-6)

    averages = {k: v for k, v in state["state_dict"].items() if k.startswith("ema.module.")}
    assert bool(averages) == ema
    if ema:
        assert all(v.dtype == torch.float32 for v in averages.values() if v.is_floating_point())
        initial = initial_ema_weights(ema)
        assert averages.keys() == initial.keys()
        moved = [k for k in averages if averages[k].is_floating_point() and not torch.equal(averages[k], initial[k])]
        assert len(moved) > len(averages) // 2, f"only {len(moved)} of {len(averages)} EMA tensors moved"
