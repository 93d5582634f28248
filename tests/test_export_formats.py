"""`sasa export --format state_dict|exported|onnx` on a trained digits classifier (with an EMA):
each output used as its users would use it, against the checkpoint's model on real digit scans."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sasa_lightning.cli import main
from sasa_lightning.data.digits import DIGITS_MEAN, DIGITS_STD
from sasa_lightning.checkpoint import load_classifier
from sasa_lightning.models import create_model

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(trained_digits):
    return trained_digits


def digit_scans(cache: Path, count: int) -> torch.Tensor:
    """Validation scans of the digits (PNG files the demo wrote), normalised as the demo's loader does."""
    files = sorted((cache / "digits32" / "val").rglob("*.png"))[:count]
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255 for f in files])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    return (images - torch.tensor(DIGITS_MEAN)[:, None, None]) / torch.tensor(DIGITS_STD)[:, None, None]


def test_the_classifier_is_the_checkpoints_ema(trained):
    checkpoint, _ = trained
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    model = load_classifier(checkpoint)
    assert not model.training
    ema = {k[len("ema.module."):]: v for k, v in state.items() if k.startswith("ema.module.")}
    assert not torch.equal(ema["fc.weight"], state["model.fc.weight"])  # so the test can tell them apart
    for key, value in model.state_dict().items():
        assert torch.equal(value, ema[key]), key


def test_onnx_runs_in_onnxruntime_with_the_models_logits(trained, tmp_path):
    import onnx
    import onnxruntime

    checkpoint, cache = trained
    out = tmp_path / "digits.onnx"
    assert main(["export", str(checkpoint), str(out), "--format", "onnx", "--image-size", "32"]) == 0
    graph = onnx.load(str(out))
    assert {op.domain for op in graph.opset_import} <= {"", "ai.onnx"}  # the standard opset, no custom op
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    model = load_classifier(checkpoint)
    images = digit_scans(cache, 24)
    for batch in (images[:1], images):  # the batch axis is free
        got = torch.from_numpy(session.run(["logits"], {"images": batch.numpy()})[0])
        with torch.no_grad():
            expected = model(batch)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        assert torch.equal(got.argmax(1), expected.argmax(1))
    assert not list(tmp_path.glob(".*partial*"))


def test_exported_program_loads_and_takes_any_batch(trained, tmp_path):
    checkpoint, cache = trained
    out = tmp_path / "digits.pt2"
    assert main(["export", str(checkpoint), str(out), "--format", "exported", "--image-size", "32"]) == 0
    program = torch.export.load(out)
    model = load_classifier(checkpoint)
    images = digit_scans(cache, 5)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images), model(images), rtol=1e-5, atol=1e-5)


def test_state_dict_loads_into_a_model_built_by_name(trained, tmp_path):
    checkpoint, cache = trained
    out = tmp_path / "digits.pt"
    assert main(["export", str(checkpoint), str(out), "--format", "state_dict"]) == 0
    hparams = torch.load(checkpoint, weights_only=True)["hyper_parameters"]
    model = create_model(hparams["model"], num_classes=10, **hparams["model_options"]).eval()
    model.load_state_dict(torch.load(out, weights_only=True))  # strict: exactly the model's tensors
    images = digit_scans(cache, 5)
    with torch.no_grad():
        torch.testing.assert_close(model(images), load_classifier(checkpoint)(images))
