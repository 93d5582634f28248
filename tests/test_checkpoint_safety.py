"""Checkpoints from elsewhere: nothing in them runs, and one that is not the run the command line
describes is refused in one line before Lightning reads it."""

from pathlib import Path

import pytest
import torch

from sasa_lightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ["--config", str(ROOT / "configs/demo/digits.yaml")]
ZERO2 = ["--config", str(ROOT / "configs/strategy/deepspeed_zero2.yaml")]


class Payload:
    """Unpickling this creates the file `marker`: the proof that a checkpoint ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def deepspeed_shaped(root: Path, payload: Payload, where: str) -> Path:
    """A directory laid out as DeepSpeed writes one, with the payload in one of its files."""
    tag = root / "last.ckpt" / "checkpoint"
    tag.mkdir(parents=True)
    (root / "last.ckpt" / "latest").write_text("checkpoint")
    model = {"module": {"model.fc.weight": torch.zeros(2, 2)}, "hyper_parameters": {}}
    optimizer = {"optimizer_state_dict": {"zero_stage": 2}}
    (model if where == "model" else optimizer)["payload"] = payload
    torch.save(model, tag / "mp_rank_00_model_states.pt")
    torch.save(optimizer, tag / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return root / "last.ckpt"


def one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and "[WARNING]" not in line]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err[-3000:]
    assert lines[0].startswith("sasa: error: ")
    return lines[0]


@pytest.mark.parametrize("where", ["model", "optimizer"])
def test_export_of_a_crafted_deepspeed_directory_runs_nothing(tmp_path, capsys, where):
    marker = tmp_path / "pwned"
    directory = deepspeed_shaped(tmp_path, Payload(marker), where)
    out = tmp_path / "out.ckpt"
    assert main(["export", str(directory), str(out)]) == 2
    line = one_line_error(capsys)
    assert "holds objects other than tensors and plain values" in line and "_states.pt" in line
    assert not marker.exists() and not out.exists() and not list(tmp_path.glob("tmp*"))


def test_resume_from_a_crafted_deepspeed_directory_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SASA_CACHE", str(tmp_path / "cache"))
    marker = tmp_path / "pwned"
    directory = deepspeed_shaped(tmp_path, Payload(marker), "optimizer")
    assert main(["fit", *DIGITS, *ZERO2, "--ckpt_path", str(directory), "--trainer.default_root_dir", str(tmp_path / "run")]) == 2
    assert "optim_states.pt" in one_line_error(capsys)
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_a_crafted_checkpoint_file_is_refused_before_lightning_reads_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Payload(marker)}, tmp_path / "crafted.ckpt")
    assert main(["validate", *DIGITS, "--ckpt_path", str(tmp_path / "crafted.ckpt")]) == 2
    assert "crafted.ckpt' is corrupt, truncated, or holds objects" in one_line_error(capsys)
    assert not marker.exists()


def trained_as(path: Path, class_path: str, **hparams) -> Path:
    """A checkpoint file carrying the hyper-parameters a LightningCLI run saves."""
    torch.save({"state_dict": {}, "hyper_parameters": {"_class_path": class_path, **hparams,
                                                       "_instantiator": "lightning.pytorch.cli.instantiate_module"}}, path)
    return path


def test_a_resume_that_contradicts_the_command_line_is_refused(tmp_path, capsys):
    checkpoint = trained_as(tmp_path / "r26.ckpt", "sasa_lightning.tasks.ImageClassifier", model="sasa_resnet26",
                            num_classes=10, model_options={"kernel_size": 3}, lr_per_256=0.1, ema_decay=0.99)
    args = ["fit", *DIGITS, "--ckpt_path", str(checkpoint), "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main([*args, "--model.init_args.model", "sasa_resnet38"]) == 2
    line = one_line_error(capsys)
    assert "model 'sasa_resnet38' (checkpoint: 'sasa_resnet26')" in line and "r26.ckpt" in line
    assert main([*args, "--model.init_args.ema_decay", "0.5"]) == 2
    assert "ema_decay 0.5 (checkpoint: 0.99)" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()
    # Evaluation compares only the network: a training option (the learning rate) may differ.
    assert main(["validate", *DIGITS, "--ckpt_path", str(checkpoint), "--model.init_args.model", "resnet26"]) == 2
    assert "model 'resnet26'" in one_line_error(capsys)


def test_a_detector_checkpoint_given_to_the_classifier_says_it_is_a_detector(tmp_path, capsys):
    checkpoint = trained_as(tmp_path / "det.ckpt", "sasa_lightning.tasks.ObjectDetector", model="retinanet_sasa_resnet50")
    assert main(["fit", *DIGITS, "--ckpt_path", str(checkpoint), "--trainer.default_root_dir", str(tmp_path / "run")]) == 2
    line = one_line_error(capsys)
    assert "is of ObjectDetector (a detector), but the config trains ImageClassifier (a classifier)" in line


def test_a_deepspeed_directory_without_a_deepspeed_strategy_says_how_to_use_it(tmp_path, capsys):
    directory = deepspeed_shaped(tmp_path, Payload(tmp_path / "pwned"), "model")
    assert main(["validate", *DIGITS, "--ckpt_path", str(directory)]) == 2
    assert f"sasa export {directory} model.ckpt" in one_line_error(capsys)
