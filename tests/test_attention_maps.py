"""`sasa attention` on a trained digits classifier: the windows it draws are the layers' own
softmax weights, each summing to 1, placed where the pixel's window is."""

import pytest
import torch

from sasa_lightning.cli.attention_maps import attention_maps, load_network
from sasa_lightning.cli import main
from sasa_lightning.data.digits import DIGITS_MEAN, DIGITS_STD
from sasa_lightning.models import create_model
from sasa_lightning.nn import LocalSelfAttention2d

pytestmark = pytest.mark.slow


def a_scan(cache):
    return sorted((cache / "digits32" / "val" / "3").glob("*.png"))[0]


def test_every_window_sums_to_one_and_sits_around_its_pixel(trained_digits, tmp_path):
    checkpoint, cache = trained_digits
    out, windows = attention_maps(checkpoint, a_scan(cache), tmp_path / "maps.png", pixel=(13, 21),
                                  mean=DIGITS_MEAN, std=DIGITS_STD)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    network, _, _ = load_network(checkpoint)
    layers = {name: m for name, m in network.named_modules() if isinstance(m, LocalSelfAttention2d)}
    assert {w.layer for w in windows} == {"stages.3.0.spatial"}  # the quick run's only attention stage
    assert len(windows) == layers["stages.3.0.spatial"].heads
    for window in windows:
        k = window.weights.shape[0]
        torch.testing.assert_close(window.weights.sum(), torch.tensor(1.0))
        # The window's centre cell holds the pixel: stage 4's input is at stride 16 of the 32x32 image.
        assert window.cell == 16
        centre = (window.top_left[0] + (k // 2) * window.cell, window.top_left[1] + (k // 2) * window.cell)
        assert centre == (13 // 16 * 16, 21 // 16 * 16)


def test_the_windows_are_the_layers_forward_weights():
    """attention_weights is the softmax the layer's forward uses: the output recomputed from
    those weights and the layer's values equals the layer's forward (cpu backend)."""
    torch.manual_seed(0)
    layer = LocalSelfAttention2d(8, 16, kernel_size=5, heads=2).double()
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    weights = layer.attention_weights(x)  # (B, heads, k*k, H, W)
    torch.testing.assert_close(weights.sum(2), torch.ones(2, 2, 9, 11, dtype=torch.float64))
    values = torch.nn.functional.conv2d(x, layer.value[:, :, None, None]).unflatten(1, (2, 8))
    windows = torch.nn.functional.unfold(values.flatten(1, 2), 5, padding=2).view(2, 2, 8, 25, 9, 11)
    recomputed = (weights.unsqueeze(2) * windows).sum(3).flatten(1, 2)
    torch.testing.assert_close(recomputed, layer(x))


def test_the_attention_stem_adds_its_value_mixtures(tmp_path):
    torch.manual_seed(0)
    model = create_model("sasa_resnet26", num_classes=10, kernel_size=3, stem="attention", base_width=16)
    checkpoint = tmp_path / "stem.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"_class_path": "sasa_lightning.tasks.ImageClassifier", "model": "sasa_resnet26",
                                     "num_classes": 10, "model_options": {"kernel_size": 3, "stem": "attention",
                                                                          "base_width": 16}}}, checkpoint)
    from PIL import Image

    Image.new("RGB", (70, 60), (120, 30, 200)).save(tmp_path / "image.png")
    assert main(["attention", "--ckpt", str(checkpoint), "--image", str(tmp_path / "image.png"),
                 "--out", str(tmp_path / "maps.png")]) == 0
    _, windows = attention_maps(checkpoint, tmp_path / "image.png", tmp_path / "again.png")
    # 64x64 as seen (sides rounded to 32s); the first layer of each of the four stages, 8 heads, at
    # the centre and at the class map's peak (one pixel when they coincide).
    assert {w.layer for w in windows} == {f"stages.{s}.0.spatial" for s in range(4)}
    assert len({w.pixel for w in windows}) in (1, 2) and (32, 32) in {w.pixel for w in windows}


@pytest.mark.parametrize("extra,says", [
    (["--layers", "stages.9.0.spatial"], "no attention layer named 'stages.9.0.spatial'"),
    (["--pixel", "40,3"], "--pixel 40,3 is outside the image, which is 32x32"),
])
def test_bad_choices_are_one_line(trained_digits, tmp_path, capsys, extra, says):
    checkpoint, cache = trained_digits
    out = tmp_path / "maps.png"
    assert main(["attention", "--ckpt", str(checkpoint), "--image", str(a_scan(cache)), "--out", str(out), *extra]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_a_detectors_backbone_is_drawn_with_its_own_normalisation(tmp_path):
    torch.manual_seed(0)
    options = {"base_width": 16, "channels": 32, "kernel_size": 3, "anchor_size": 8, "min_size": 64,
               "max_size": 64}
    detector = create_model("retinanet_sasa_resnet26", num_classes=3, **options)
    checkpoint = tmp_path / "detector.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in detector.state_dict().items()},
                "hyper_parameters": {"_class_path": "sasa_lightning.tasks.ObjectDetector",
                                     "model": "retinanet_sasa_resnet26", "num_classes": 3, "model_options": options}},
               checkpoint)
    from PIL import Image

    Image.new("RGB", (64, 64), (10, 200, 90)).save(tmp_path / "image.png")
    _, windows = attention_maps(checkpoint, tmp_path / "image.png", tmp_path / "maps.png")
    assert {w.pixel for w in windows} == {(32, 32)}  # the centre only: a detector has no class map
    assert all(abs(float(w.weights.sum()) - 1) < 1e-5 for w in windows)
    assert (tmp_path / "maps.png").exists()
