"""`sasa data make-shapes`: the built-in detection data, in real COCO format."""

import json

import numpy as np
import pytest
from PIL import Image

from sasa_lightning.cli import main
from sasa_lightning.data.shapes import make_shapes


def test_make_shapes_writes_the_coco_layout_with_boxes_around_the_shapes(tmp_path, capsys):
    root = tmp_path / "shapes"
    assert main(["data", "make-shapes", "--out", str(root), "--train", "6", "--val", "3", "--image-size", "96"]) == 0
    assert f"wrote {root}" in capsys.readouterr().out
    train = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    val = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    assert [c["name"] for c in train["categories"]] == ["circle", "square", "triangle"]
    assert len(train["images"]) == 6 and len(val["images"]) == 3
    assert not {i["id"] for i in train["images"]} & {i["id"] for i in val["images"]}  # ids unique across splits
    for split, coco in (("train2017", train), ("val2017", val)):
        ids = {i["id"] for i in coco["images"]}
        for record in coco["images"]:
            with Image.open(root / split / record["file_name"]) as image:
                assert image.size == (record["width"], record["height"]) == (96, 96)
        for box in coco["annotations"]:
            x, y, w, h = box["bbox"]
            assert box["image_id"] in ids and box["category_id"] in (1, 2, 3) and box["iscrowd"] == 0
            assert 0 <= x and 0 <= y and x + w <= 96 and y + h <= 96 and w >= 6 and box["area"] == pytest.approx(w * h, abs=0.1)


def test_shapes_are_drawn_inside_their_boxes_some_small_some_overlapping(tmp_path):
    """The pixels at the centre of a lone square's box are the square's flat colour, not background."""
    root = make_shapes(tmp_path / "shapes", train_images=20, val_images=1, image_size=96, seed=3)
    coco = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    per_image = {}
    for box in coco["annotations"]:
        per_image.setdefault(box["image_id"], []).append(box)
    assert any(b["bbox"][2] < 15 for b in coco["annotations"])  # small objects
    overlap = lambda a, b: a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
    assert any(overlap(a["bbox"], b["bbox"]) for boxes in per_image.values() for a in boxes for b in boxes if a is not b)
    lone_squares = [b[0] for b in per_image.values() if len(b) == 1 and b[0]["category_id"] == 2 and b[0]["bbox"][2] > 20]
    assert lone_squares, "seed 3 should give a lone square"
    box = lone_squares[0]
    x, y, w, h = (round(v) for v in box["bbox"])
    with Image.open(root / "train2017" / f"{box['image_id']:012d}.jpg") as image:
        pixels = np.asarray(image, dtype=float)
    inner = pixels[y + h // 4 : y + 3 * h // 4, x + w // 4 : x + 3 * w // 4]
    assert inner.std(axis=(0, 1)).max() < 8  # one flat colour (JPEG noise only); the background varies far more
    assert pixels.std(axis=(0, 1)).max() > 15


def test_make_shapes_refuses_empty_splits(tmp_path):
    with pytest.raises(ValueError, match="at least one image per split"):
        make_shapes(tmp_path / "x", train_images=0)
    assert not (tmp_path / "x").exists()
