"""The built-in detection data: coloured circles, squares and triangles on textured backgrounds.

Written in the standard COCO layout, so it is read exactly as COCO is:

    <root>/train2017/000000000001.jpg ...
    <root>/val2017/...
    <root>/annotations/instances_train2017.json, instances_val2017.json

Every image holds 1-6 objects of 6-60 pixels (some small, some overlapping; a box is the whole
shape even where another covers part of it), drawn over a background of smooth colour, noise and
stripes so that an edge alone does not find an object.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from ..errors import ConfigError

CATEGORIES = ({"id": 1, "name": "circle"}, {"id": 2, "name": "square"}, {"id": 3, "name": "triangle"})
SPLITS = ("train2017", "val2017")


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] / size
    base = np.stack([np.sin(x * rng.uniform(1, 6) + rng.uniform(0, 6)) * np.cos(y * rng.uniform(1, 6)) for _ in range(3)], -1)
    pixels = (base + 1) * rng.uniform(40, 90) + rng.uniform(0, 60, 3)
    angle = rng.uniform(0, math.pi)
    stripes = np.sin((x * math.cos(angle) + y * math.sin(angle)) * size / rng.uniform(4, 12))
    pixels += stripes[..., None] * rng.uniform(5, 20) + rng.normal(0, 10, pixels.shape)
    return pixels.clip(0, 255).astype(np.uint8)


def _draw_object(draw, rng: np.random.Generator, size: int) -> tuple[int, list[float]]:
    """Draws one shape; returns its category id and COCO box [x, y, width, height]."""
    category = int(rng.integers(1, 4))
    side = float(rng.uniform(6, 60) if rng.random() < 0.7 else rng.uniform(6, 14))  # about 1 in 3 small
    x0, y0 = rng.uniform(0, size - side, 2)
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if category == 1:
        draw.ellipse([x0, y0, x0 + side, y0 + side], fill=colour)
    elif category == 2:
        draw.rectangle([x0, y0, x0 + side, y0 + side], fill=colour)
    else:
        draw.polygon([(x0, y0 + side), (x0 + side, y0 + side), (x0 + side / 2, y0)], fill=colour)
    return category, [round(x0, 2), round(y0, 2), round(side, 2), round(side, 2)]


def _write_split(folder: Path, annotations: Path, images: int, size: int, rng: np.random.Generator, first_id: int) -> None:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True)
    records, objects = [], []
    for image_id in range(first_id, first_id + images):
        image = Image.fromarray(_background(rng, size))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(1, 7))):
            category, box = _draw_object(draw, rng, size)
            objects.append({"id": len(objects) + 1, "image_id": image_id, "category_id": category, "bbox": box,
                            "area": round(box[2] * box[3], 2), "iscrowd": 0})
        name = f"{image_id:012d}.jpg"
        image.save(folder / name, quality=92)
        records.append({"id": image_id, "file_name": name, "width": size, "height": size})
    coco = {"images": records, "annotations": objects, "categories": list(CATEGORIES)}
    annotations.write_text(json.dumps(coco))


def make_shapes(root: str | os.PathLike, train_images: int = 2000, val_images: int = 200, image_size: int = 128,
                seed: int = 0) -> Path:
    """Write the data set under `root` (replacing it); a temporary folder is renamed at the end."""
    if train_images < 1 or val_images < 1:
        raise ConfigError(f"make-shapes needs at least one image per split, got {train_images} train and {val_images} val")
    if image_size < 64:
        raise ConfigError(f"image_size must be at least 64 pixels (shapes are up to 60), got {image_size}")
    rng = np.random.default_rng(seed)
    with atomic_dir(root) as partial:
        (partial / "annotations").mkdir()
        first_id = 1
        for split, images in zip(SPLITS, (train_images, val_images)):
            _write_split(partial / split, partial / "annotations" / f"instances_{split}.json", images, image_size, rng, first_id)
            first_id += images
    return Path(root)
