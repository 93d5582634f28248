"""The training recipe's parts: parameter groups, schedule, EMA, checkpoint loading."""

import math

import pytest
import torch

from sasa_lightning.models import create_model
from sasa_lightning.nn import AttentionStem, LocalSelfAttention2d
from sasa_lightning.errors import CheckpointError
from sasa_lightning.tasks import EMA
from sasa_lightning.tasks.optim import parameter_groups, scaled_learning_rate, warmup_cosine
from sasa_lightning.checkpoint import load_for_finetuning


def test_no_weight_decay_on_norms_biases_and_position_embeddings():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), LocalSelfAttention2d(16, 16, 3, 2), AttentionStem(16, 16, heads=2)
    )
    decay, no_decay = parameter_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    assert {"0.bias", "1.weight", "1.bias", "2.relative.rel_rows", "2.relative.rel_cols"} <= exempt
    assert {"3.emb_row", "3.emb_col", "3.nu", "3.relative.rel_rows"} <= exempt
    assert {"0.weight", "2.query", "2.key", "2.value", "3.query", "3.value"} <= decayed


def test_learning_rate_recipe():
    assert scaled_learning_rate(0.1, 4096) == pytest.approx(1.6)  # the paper's 1.6 at batch 4096
    assert warmup_cosine(0, 10, 110) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110) == pytest.approx(0.0, abs=1e-12)
    values = [warmup_cosine(s, 10, 110) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_ema_follows_the_weights():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # first update: decay warms up to min(0.9, 1/10) = 0.1
    torch.testing.assert_close(ema.module.weight, start + 0.9)
    assert not any(p.requires_grad for p in ema.module.parameters())
    for _ in range(200):
        ema.update(model)
    torch.testing.assert_close(ema.module.weight, model.weight.detach())
    assert ema.current_decay() == 0.9


def test_ema_stays_float32_and_moves_when_the_model_is_cast_to_bf16():
    """bf16-true (and DeepSpeed's bf16 mode) cast the whole task; 0.9999 updates round away in bf16."""
    from sasa_lightning.tasks import ImageClassifier

    task = ImageClassifier(model="resnet26", num_classes=4, ema_decay=0.9999, model_options={"base_width": 8})
    task.to(torch.bfloat16)  # what Lightning's bf16-true precision plugin does to the module
    task.ema.updates.fill_(10**6)  # past the warm-up: the paper's decay applies
    task.on_fit_start()
    assert task.ema.dtype == torch.float32 and next(task.model.parameters()).dtype == torch.bfloat16
    before = task.ema.module.fc.weight.clone()
    with torch.no_grad():
        task.model.fc.weight.add_(1.0)
    for _ in range(10):
        task.ema.update(task.model)
    moved = (task.ema.module.fc.weight - before).abs()
    torch.testing.assert_close(moved, torch.full_like(moved, 1 - 0.9999**10), rtol=0.02, atol=0)
    images = torch.randn(2, 3, 32, 32, dtype=torch.bfloat16)
    task.eval()
    assert task(images).dtype == torch.float32  # the EMA evaluates bf16 batches in float32


def save_lightning_checkpoint(path, model, name):
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": {"model": name}}, path)


def test_finetuning_loads_the_body_and_reinitialises_another_head(tmp_path):
    source = create_model("resnet26", num_classes=10)
    save_lightning_checkpoint(tmp_path / "a.ckpt", source, "resnet26")
    target = create_model("resnet26", num_classes=3)
    head_before = target.fc.weight.detach().clone()
    report = load_for_finetuning(target, tmp_path / "a.ckpt")
    assert sorted(report.reinitialised) == ["fc.bias", "fc.weight"]
    assert not report.missing and not report.unexpected
    torch.testing.assert_close(target.stages[2][0].conv1.weight, source.stages[2][0].conv1.weight)
    torch.testing.assert_close(target.fc.weight, head_before)
    assert "re-initialised: fc.weight, fc.bias" in str(report)


def test_finetuning_refuses_another_architecture(tmp_path):
    save_lightning_checkpoint(tmp_path / "b.ckpt", create_model("resnet38", num_classes=10), "resnet38")
    with pytest.raises(CheckpointError, match=r"different architecture \(it holds a resnet38\).*unexpected"):
        load_for_finetuning(create_model("resnet26", num_classes=10), tmp_path / "b.ckpt")
    save_lightning_checkpoint(tmp_path / "c.ckpt", create_model("sasa_resnet26", kernel_size=3), "sasa_resnet26")
    with pytest.raises(CheckpointError, match="differ in shape"):
        load_for_finetuning(create_model("sasa_resnet26", kernel_size=5), tmp_path / "c.ckpt")


def test_corrupt_truncated_and_unsafe_checkpoints_are_refused(tmp_path):
    model = create_model("resnet26", num_classes=10)
    save_lightning_checkpoint(tmp_path / "good.ckpt", model, "resnet26")
    data = (tmp_path / "good.ckpt").read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.ckpt").write_bytes(bytes(range(256)) * 10)
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "payload": math.factorial}, tmp_path / "unsafe.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    for name, reason in (("truncated", "not a PyTorch checkpoint"), ("noise", "not a PyTorch checkpoint"),
                         ("text", "not a PyTorch checkpoint"), ("unsafe", "holds objects")):
        with pytest.raises(CheckpointError, match=f"{name}.ckpt' is corrupt, truncated, or {reason}"):
            load_for_finetuning(model, tmp_path / f"{name}.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_for_finetuning(model, tmp_path / "missing.ckpt")
