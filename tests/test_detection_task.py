"""The detection task end to end on generated shapes: COCO mAP, training, backbone init, prediction."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from sasa_lightning.cli import main
from sasa_lightning.data.shapes import make_shapes
from sasa_lightning.models import create_model
from sasa_lightning.tasks.detection import _mean_average_precision
from sasa_lightning.checkpoint import load_backbone
from sasa_lightning.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs/demo/shapes_retinanet.yaml")
# The demo's detector made tinier still, on 64x64 shapes, for a few steps. Its scores stay low after
# so little training, so every score is kept (RetinaNet's default drops those under 0.05).
QUICK = [
    "--config", DEMO,
    "--model.init_args.model_options", '{"base_width": 16, "channels": 32, "kernel_size": 3, '
    '"anchor_size": 8, "fpn": "attention", "heads": "attention", "min_size": 64, "max_size": 64, '
    '"score_threshold": 0.0}',
    "--data.init_args.batch_size", "4",
    "--data.init_args.max_size", "64",
    "--data.init_args.num_workers", "0",
    "--trainer.enable_model_summary", "false",
]


def box(x1, y1, x2, y2):
    return [float(x1), float(y1), float(x2), float(y2)]


def truth(boxes, labels, crowd=None):
    return {"boxes": torch.tensor(boxes), "labels": torch.tensor(labels),
            "iscrowd": torch.tensor(crowd or [0] * len(labels))}


def found(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes).reshape(-1, 4), "scores": torch.tensor(scores), "labels": torch.tensor(labels, dtype=torch.long)}


def coco_map(predictions, targets):
    metric = _mean_average_precision()
    metric.update(predictions, targets)
    return {k: float(v) for k, v in metric.compute().items() if v.numel() == 1}


TARGETS = [truth([box(10, 10, 50, 50), box(60, 60, 100, 120)], [0, 1]), truth([box(0, 0, 30, 20)], [0])]


def test_map_is_one_for_perfect_detections_and_zero_for_none():
    perfect = [found([t["boxes"][i].tolist() for i in range(len(t["labels"]))], [0.9] * len(t["labels"]), t["labels"].tolist())
               for t in TARGETS]
    result = coco_map(perfect, TARGETS)
    assert result["map"] == result["map_50"] == result["map_75"] == 1.0
    assert result["map_small"] == result["map_medium"] == 1.0 and result["map_large"] == -1.0  # none large: COCO says -1
    assert coco_map([found([], [], []), found([], [], [])], TARGETS)["map"] == 0.0


def test_map_follows_coco_interpolation_and_ignores_crowd_regions():
    # One of two circles found: precision 1 up to recall 0.5, nothing after: 51 of COCO's 101 recall points.
    half = coco_map([found([box(10, 10, 50, 50)], [0.9], [0])], [truth([box(10, 10, 50, 50), box(60, 60, 90, 90)], [0, 0])])
    assert half["map"] == pytest.approx(51 / 101, abs=1e-6)
    # A confident detection on a crowd region is neither a hit nor a false positive.
    crowd = truth([box(10, 10, 50, 50), box(60, 60, 120, 120)], [0, 0], crowd=[0, 1])
    assert coco_map([found([box(60, 60, 120, 120), box(10, 10, 50, 50)], [0.95, 0.9], [0, 0])], [crowd])["map"] == 1.0
    # Without the crowd flag the same detection is a false positive ranked first.
    plain = truth([box(10, 10, 50, 50)], [0])
    assert coco_map([found([box(60, 60, 120, 120), box(10, 10, 50, 50)], [0.95, 0.9], [0, 0])], [plain])["map"] < 1.0


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    # 9 validation images: two processes get 5 and 4 (none repeated to even them out).
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", train_images=24, val_images=9, image_size=64, seed=1)


def rows(root):
    with next(Path(root, "logs").glob("version_*/metrics.csv")).open() as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """A few epochs of the tiny full-attention detector; the run folder."""
    root = tmp_path_factory.mktemp("run")
    assert main(["fit", *QUICK, "--data.init_args.root", str(shapes), "--trainer.default_root_dir", str(root),
                 "--trainer.max_epochs", "4", "--model.init_args.lr_per_64", "0.05"]) == 0
    return root


@pytest.mark.slow
def test_a_short_fit_lowers_the_loss_and_validates_with_coco_map(trained):
    logged = rows(trained)
    losses = [float(r["train/loss_epoch"]) for r in logged if r.get("train/loss_epoch")]
    assert len(losses) == 4 and losses[-1] < 0.95 * losses[0]
    validated = [r for r in logged if r.get("val/map")]
    assert len(validated) == 4
    assert all(-1 <= float(r[f"val/{k}"]) <= 1 for r in validated for k in ("map", "map_50", "map_75", "map_small"))
    best = list((trained / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and "-map" in best[0].name  # the best checkpoint follows val/map
    hparams = torch.load(trained / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["category_ids"] == [1, 2, 3] and hparams["category_names"] == ["circle", "square", "triangle"]


@pytest.mark.slow
def test_predict_writes_coco_results_and_drawings(trained, shapes):
    out = trained / "predict"
    assert main(["predict", *QUICK, "--data.init_args.root", str(shapes), "--trainer.default_root_dir", str(out),
                 "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"),
                 "--predictions.draw", "true", "--predictions.draw_threshold", "0.0"]) == 0
    val = json.loads((shapes / "annotations" / "instances_val2017.json").read_text())
    images = json.loads((out / "images.json").read_text())
    assert sorted(i["id"] for i in images) == sorted(i["id"] for i in val["images"])  # the split's own ids
    results = json.loads((out / "detections.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 2, 3}
    for result in results:
        x, y, w, h = result["bbox"]
        assert set(result) == {"image_id", "category_id", "bbox", "score"} and w >= 0 and h >= 0 and 0 <= result["score"] <= 1
    drawn = sorted((out / "drawn").glob("*.png"))
    assert len(drawn) == len(images)
    with Image.open(drawn[0]) as picture:
        assert picture.size == (384, 384)  # 64x64 enlarged so that labels are readable
    assert not list(out.rglob(".*partial*"))

    # Any folder of images: names that are not numbers get ids 1..N, listed in images.json.
    folder = out / "mine"
    folder.mkdir()
    for name in ("b.png", "a.jpg"):
        Image.new("RGB", (80, 50), (20, 120, 200)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    assert main(["predict", *QUICK, "--data.init_args.root", str(shapes), "--data.init_args.predict_dir", str(folder),
                 "--trainer.default_root_dir", str(out / "mine_run"),
                 "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")]) == 0
    assert json.loads((out / "mine_run" / "images.json").read_text()) == [{"id": 1, "file_name": "a.jpg"},
                                                                         {"id": 2, "file_name": "b.png"}]


def test_predict_on_an_empty_folder_is_one_line(trained, shapes, tmp_path, capsys):
    assert main(["predict", *QUICK, "--data.init_args.root", str(shapes), "--data.init_args.predict_dir", str(tmp_path),
                 "--trainer.default_root_dir", str(tmp_path / "run"),
                 "--ckpt_path", str(trained / "checkpoints" / "last.ckpt")]) == 2
    assert f"image folder '{tmp_path}' holds no images" in capsys.readouterr().err


def classifier_checkpoint(path, model="sasa_resnet26", **options):
    classifier = create_model(model, num_classes=10, **options)
    torch.save({"state_dict": {f"model.{k}": v for k, v in classifier.state_dict().items()},
                "hyper_parameters": {"model": model}}, path)
    return classifier


def test_backbone_init_loads_a_classifiers_body_and_reports_its_head(tmp_path):
    classifier = classifier_checkpoint(tmp_path / "classifier.ckpt", base_width=16, kernel_size=3)
    detector = create_model("retinanet_sasa_resnet26", num_classes=3, base_width=16, kernel_size=3, channels=32)
    report = load_backbone(detector.backbone.body, tmp_path / "classifier.ckpt")
    assert report.unexpected == ["fc.bias", "fc.weight"] and not report.missing
    body = detector.backbone.body.state_dict()
    assert report.loaded == len(body)
    assert all(torch.equal(body[k], v) for k, v in classifier.state_dict().items() if not k.startswith("fc."))

    classifier_checkpoint(tmp_path / "wide.ckpt", base_width=32, kernel_size=3)
    with pytest.raises(CheckpointError, match=r"does not fit the detector's backbone \(it holds a sasa_resnet26\): .* differ in shape"):
        load_backbone(detector.backbone.body, tmp_path / "wide.ckpt")


def test_backbone_init_through_the_cli_reports_and_starts_from_the_classifier(shapes, tmp_path, capsys):
    classifier = classifier_checkpoint(tmp_path / "classifier.ckpt", base_width=16, kernel_size=3)
    root = tmp_path / "run"
    assert main(["fit", *QUICK, "--data.init_args.root", str(shapes), "--trainer.default_root_dir", str(root),
                 "--model.init_args.backbone_init", str(tmp_path / "classifier.ckpt"),
                 "--model.init_args.lr_per_64", "0.0", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1",
                 "--trainer.limit_val_batches", "1"]) == 0
    state = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    # With a learning rate of 0 only the batch-norm statistics move: every weight is the classifier's.
    assert all(torch.equal(state[f"model.backbone.body.{k}"], v) for k, v in classifier.state_dict().items()
               if not k.startswith("fc.") and "running_" not in k and "num_batches" not in k)


def test_a_classifier_is_not_a_detector(shapes, capsys):
    assert main(["fit", *QUICK, "--data.init_args.root", str(shapes), "--model.init_args.model", "sasa_resnet26",
                 "--model.init_args.model_options", "{}"]) == 2
    assert "ObjectDetector needs a detector; 'sasa_resnet26' is not one" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_validation_counts_every_image_once(trained, shapes, tmp_path):
    """COCO mAP of 2 processes (5 and 4 images) equals that of 1 process on all 9."""
    maps = {}
    for devices in (1, 2):
        root = tmp_path / f"devices{devices}"
        command = [sys.executable, "-m", "sasa_lightning.cli", "validate", *QUICK, "--data.init_args.root", str(shapes),
                   "--ckpt_path", str(trained / "checkpoints" / "last.ckpt"), "--trainer.default_root_dir", str(root),
                   "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto"]
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        assert result.returncode == 0, result.stderr[-3000:]
        maps[devices] = {k: float(v) for k, v in rows(root)[-1].items() if k.startswith("val/") and v}
    assert set(maps[1]) == {f"val/{k}" for k in ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")}
    assert maps[2] == pytest.approx(maps[1], abs=1e-6), (maps[1], maps[2])


def test_the_detector_runs_its_backbone_channels_last_with_the_same_losses():
    from sasa_lightning.tasks import ObjectDetector

    options = {"base_width": 16, "channels": 32, "kernel_size": 3, "anchor_size": 8, "min_size": 64,
               "max_size": 64}
    detectors = []
    for channels_last in (True, False):
        torch.manual_seed(0)
        detectors.append(ObjectDetector("retinanet_sasa_resnet26", num_classes=3, model_options=options,
                                        channels_last=channels_last))
    backbone = detectors[0].model.backbone
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in backbone.parameters() if p.dim() == 4)
    seen = []
    backbone.body.stem.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])}] * 2
    losses = [detector.model(images, targets) for detector in detectors]
    assert seen == [True]
    for key in losses[1]:
        torch.testing.assert_close(losses[0][key], losses[1][key], rtol=1e-5, atol=1e-5)
