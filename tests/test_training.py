"""The `sasa` trainer end to end on the built-in digits: configs, resume, fine-tuning, bad input."""

import csv
from pathlib import Path

import pytest
import torch

from sasa_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))

# A few cheap steps of a SASA model (attention in the last stage) on the digits, bit-reproducible:
# FFCV's crop and flip draws are not seedable, so the crop covers the whole image.
QUICK = [
    "--config", str(ROOT / "configs/demo/digits.yaml"),
    "--model.init_args.model_options", '{"kernel_size": 3, "attention_stages": [4]}',
    "--data.init_args.batch_size", "16",
    "--data.init_args.scale", "[1.0, 1.0]",
    "--data.init_args.ratio", "[1.0, 1.0]",
    "--trainer.limit_train_batches", "3",
    "--trainer.limit_val_batches", "2",
    "--trainer.deterministic", "true",
    "--trainer.enable_model_summary", "false",
]


@pytest.fixture(scope="module", autouse=True)
def digits_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("SASA_CACHE", str(cache))
    yield cache
    patch.undo()


def fit(root, *extra):
    assert main(["fit", *QUICK, "--trainer.default_root_dir", str(root), *extra]) == 0


def last_state(root):
    return torch.load(Path(root) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def val_rows(root):
    rows = []
    for version in sorted((Path(root) / "logs").glob("version_*")):
        with (version / "metrics.csv").open() as file:
            rows += [(r["epoch"], r["val/acc1"], r["val/loss"]) for r in csv.DictReader(file) if r.get("val/acc1")]
    return rows


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_every_config_parses(config, capsys):
    """Experiment configs alone; strategy configs composed with one, as they are meant to be used."""
    composed = ["--config", str(ROOT / "configs/demo/digits.yaml")] if config.parent.name == "strategy" else []
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *composed, "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    detection = config.parent.name == "coco" or "retinanet" in config.name
    assert f"class_path: sasa_lightning.tasks.{'ObjectDetector' if detection else 'ImageClassifier'}" in printed
    if config.parent.name == "strategy":
        assert "strategy: ddp" in printed or "class_path: sasa_lightning.distributed.DeepSpeedStrategy" in printed


@pytest.mark.slow
def test_generated_configs_are_up_to_date():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "configs/generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_resume_gives_the_same_weights_and_metrics(tmp_path, capsys):
    fit(tmp_path / "straight", "--trainer.max_epochs", "4")
    fit(tmp_path / "resumed", "--trainer.max_epochs", "4", "--trainer.max_steps", "6")  # stops after 2 epochs
    assert len(val_rows(tmp_path / "resumed")) == 2
    fit(tmp_path / "resumed", "--trainer.max_epochs", "4", "--ckpt_path", "last")
    straight, resumed = last_state(tmp_path / "straight"), last_state(tmp_path / "resumed")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert val_rows(tmp_path / "straight") == val_rows(tmp_path / "resumed")
    assert "resume with: sasa fit --config" in capsys.readouterr().out


@pytest.mark.slow
def test_finetune_from_a_checkpoint_with_another_head(tmp_path, capsys):
    fit(tmp_path / "pretrained", "--trainer.max_epochs", "1")
    pretrained = last_state(tmp_path / "pretrained")
    images = tmp_path / "three_classes"
    for label in range(3):
        (images / f"c{label}").mkdir(parents=True)
        for index in range(4):
            torch.manual_seed(label * 10 + index)
            from PIL import Image

            Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(images / f"c{label}" / f"{index}.png")
    args = [
        "fit", "--config", str(ROOT / "configs/demo/finetune.yaml"),
        "--model.init_args.init_from", str(tmp_path / "pretrained/checkpoints/last.ckpt"),
        "--data.init_args.train_dir", str(images), "--data.init_args.val_dir", str(images),
        "--trainer.default_root_dir", str(tmp_path / "finetuned"), "--trainer.max_epochs", "1",
        "--data.init_args.batch_size", "4",
        "--model.init_args.model_options", '{"kernel_size": 3, "attention_stages": [4]}',
    ]
    assert main(args) == 0
    assert main([*args, "--data.init_args.batch_size", "16"]) == 2
    assert "has 12 training images, fewer than one batch of 16" in capsys.readouterr().err
    tuned = last_state(tmp_path / "finetuned")
    assert tuned["model.fc.weight"].shape == (3, 2048)
    assert pretrained["model.fc.weight"].shape == (10, 2048)


@pytest.mark.slow
def test_limit_train_batches_1_trains_one_batch_per_epoch(tmp_path, capsys):
    """Lightning types the limits `float | int`; parsed float first, `1` would be 1.0, every batch."""
    import yaml

    config = tmp_path / "limits.yaml"
    config.write_text("trainer:\n  limit_train_batches: 1\n  limit_val_batches: 1\n")
    with pytest.raises(SystemExit):
        main(["fit", *QUICK, "--config", str(config), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert (printed["limit_train_batches"], printed["limit_val_batches"]) == (1, 1)
    assert isinstance(printed["limit_train_batches"], int)
    fit(tmp_path, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1.0")
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert "(2 epochs, 2 steps)" in capsys.readouterr().out


@pytest.mark.slow
def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed", "--trainer.limit_train_batches", "2")
    state = last_state(tmp_path)
    assert state["model.fc.weight"].dtype == torch.float32  # mixed precision keeps fp32 master weights
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.inductor
def test_compiled_training_matches_eager_and_a_resume_may_switch_it_on(tmp_path):
    # One step each: the float rounding that compiled code changes grows with every step of such a
    # small-batch run (1e-3 of the weights after 3 steps, eager and compiled alike), so later
    # steps would compare the rounding, not the compiled model.
    one_step = ("--trainer.max_epochs", "1", "--trainer.max_steps", "1", "--model.init_args.warmup_epochs", "0")
    fit(tmp_path / "eager", *one_step)
    # Dynamo's own count of the graphs it compiled, not a log line (logging's handlers depend on
    # which tests ran before).
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    fit(tmp_path / "compiled", *one_step, "--model.init_args.compile", "true")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    eager, compiled = last_state(tmp_path / "eager"), last_state(tmp_path / "compiled")
    assert eager.keys() == compiled.keys()
    for key in eager:
        if eager[key].is_floating_point():
            torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-4, msg=lambda m: f"{key}: {m}")
    # An eager run resumed compiled: how the model runs is the command line's, not the checkpoint's.
    torch._dynamo.reset()  # else the first run's compiled graph serves the resumed one
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    fit(tmp_path / "eager", "--trainer.max_epochs", "2", "--model.init_args.warmup_epochs", "0",
        "--model.init_args.compile", "true", "--ckpt_path", "last")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    assert [row[0] for row in val_rows(tmp_path / "eager")] == ["1"]


@pytest.mark.slow
def test_the_learning_rate_finder_keeps_its_rate_per_256_images(tmp_path):
    """Lightning's LearningRateFinder callback on the task's `lr`: the rate it finds for this
    global batch (16) is recorded as lr_per_256, and the schedule trains at it."""
    fit(tmp_path, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "30",
        "--trainer.callbacks+=LearningRateFinder", "--trainer.callbacks.num_training_steps=20",
        "--model.init_args.warmup_epochs", "0")
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    per_256 = checkpoint["hyper_parameters"]["lr_per_256"]
    assert per_256 != 0.1  # the config's, which the finder replaced
    assert checkpoint["lr_schedulers"][0]["base_lrs"] == pytest.approx([per_256 * 16 / 256] * 2)


@pytest.mark.slow
def test_predict_writes_the_top5_of_every_validation_image(tmp_path):
    fit(tmp_path, "--trainer.max_epochs", "1")
    checkpoint = str(tmp_path / "checkpoints" / "last.ckpt")
    assert main(["predict", *QUICK, "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", checkpoint]) == 0
    predictions = torch.load(tmp_path / "predictions.pt", weights_only=True)
    assert predictions["classes"].shape == predictions["probabilities"].shape == (359, 5)
    assert torch.all(predictions["probabilities"][:, :-1] >= predictions["probabilities"][:, 1:])


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["--data", "sasa_lightning.data.FFCVImageNet", "--data.init_args.num_classes", "10",
             "--data.init_args.train_path", "/nonexistent/train.beton", "--data.init_args.val_path", "/nonexistent/val.beton"],
            "FFCV file '/nonexistent/train.beton' does not exist",
        ),
        (["--model.init_args.model", "resnet51"], "unknown model 'resnet51'"),
        (["--trainer.strategy", "ddp_nonexistent"], "invalid strategy name: `strategy='ddp_nonexistent'`"),
        (["--model.init_args.model_options", '{"positional": "learned"}'], "positional must be one of"),
        (["--model.init_args.init_from", "/nonexistent/x.ckpt"], "checkpoint '/nonexistent/x.ckpt' does not exist"),
        (["--model.init_args.init_from", "{tmp}/junk.ckpt"], "junk.ckpt' is corrupt, truncated, or"),
        (
            ["--data", "sasa_lightning.data.ImageFolderData", "--data.init_args.train_dir", "{tmp}/empty",
             "--data.init_args.val_dir", "{tmp}/empty", "--data.init_args.num_classes", "10"],
            "empty' holds no images in class sub-folders",
        ),
    ],
)
def test_bad_input_is_one_line(extra, message, tmp_path, digits_cache):
    """The real `sasa` command: exit status 2, one line saying what is wrong, no traceback."""
    import os
    import re
    import subprocess
    import sys

    (tmp_path / "junk.ckpt").write_bytes(b"PK\x03\x04 not really a zip file")
    (tmp_path / "empty" / "some_class").mkdir(parents=True)
    extra = [arg.replace("{tmp}", str(tmp_path)) for arg in extra]
    command = [sys.executable, "-m", "sasa_lightning.cli", "fit", *QUICK, "--trainer.default_root_dir", str(tmp_path),
               "--trainer.max_epochs", "1", *extra]
    env = dict(os.environ, SASA_CACHE=str(digits_cache))
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("sasa: error: "), result.stderr[-2000:]
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_trainer_writes_checkpoints_atomically(tmp_path):
    from sasa_lightning.cli.checkpoint_io import AtomicCheckpointIO
    from sasa_lightning.cli.lightning_cli import SasaCLI

    cli = SasaCLI(["fit", *QUICK, "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)])
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


DEFAULT_SECTIONS = ("best_checkpoint", "last_checkpoint", "lr_monitor", "progress", "throughput", "preemption", "predictions",
                    "model_summary")


def test_print_config_shows_the_default_callbacks(capsys):
    import yaml

    with pytest.raises(SystemExit):
        main(["fit", *QUICK, "--print_config"])
    config = yaml.safe_load(capsys.readouterr().out)
    assert {key for key in DEFAULT_SECTIONS if key in config} == set(DEFAULT_SECTIONS) - {"throughput"}  # no options
    assert config["last_checkpoint"]["filename"] == "last" and config["last_checkpoint"]["enable_version_counter"] is False
    assert config["best_checkpoint"]["monitor"] is None and config["best_checkpoint"]["mode"] == "max"
    assert config["preemption"]["signum"] == 10


def kinds(trainer):
    return [type(callback).__name__ for callback in trainer.callbacks]


@pytest.mark.slow
def test_default_callback_sections_configure_the_run(tmp_path):
    from sasa_lightning.cli.lightning_cli import SasaCLI

    run = ["fit", *QUICK, "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path)]
    trainer = SasaCLI(run).trainer
    best, last = trainer.checkpoint_callbacks
    assert (best.monitor, best.mode, last.filename) == ("val/acc1", "max", "last")
    assert best.filename.startswith("best-epoch") and best.dirpath == str(tmp_path / "checkpoints")
    assert {"LearningRateMonitor", "LineProgress", "Throughput", "Preemption", "PredictionWriter"} <= set(kinds(trainer))

    trainer = SasaCLI([*run, "--best_checkpoint.monitor", "val/loss", "--best_checkpoint.mode", "min",
                       "--last_checkpoint.every_n_train_steps", "2", "--progress.every_seconds", "5"]).trainer
    best, last = trainer.checkpoint_callbacks
    assert (best.monitor, best.mode, best.filename, last._every_n_train_steps) == ("val/loss", "min", None, 2)
    assert next(c for c in trainer.callbacks if type(c).__name__ == "LineProgress").every_seconds == 5


@pytest.mark.slow
def test_the_model_summary_counts_parameters_and_shows_no_flops_it_cannot_count(tmp_path, caplog):
    import logging

    from sasa_lightning.cli.lightning_cli import SasaCLI

    with caplog.at_level(logging.INFO, logger="lightning.pytorch.callbacks.model_summary"):
        SasaCLI(["fit", *QUICK, "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path),
                 "--trainer.enable_model_summary", "true"])
    assert "Total params" in caplog.text and "| model " in caplog.text
    assert "FLOPs" not in caplog.text and "Total Flops" not in caplog.text


@pytest.mark.slow
def test_checkpointing_and_logging_can_be_switched_off(tmp_path):
    from sasa_lightning.cli.lightning_cli import SasaCLI

    trainer = SasaCLI(["fit", *QUICK, "--trainer.fast_dev_run", "1", "--trainer.default_root_dir", str(tmp_path),
                       "--trainer.enable_checkpointing", "false", "--trainer.logger", "false"]).trainer
    assert trainer.checkpoint_callbacks == [] and trainer.logger is None
    assert "LearningRateMonitor" not in kinds(trainer) and "Preemption" in kinds(trainer)
    assert "ModelSummary" not in kinds(trainer)  # QUICK's --trainer.enable_model_summary false
    assert not (tmp_path / "checkpoints").exists()
