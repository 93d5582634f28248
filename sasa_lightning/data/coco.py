"""COCO-layout detection data: `annotations/instances_<split>.json` beside one image folder per split.

Read as COCO tooling reads it: boxes [x, y, width, height] become corner boxes clipped to the
image; boxes with no area (after clipping) are dropped and counted in one warning; crowd boxes
are kept apart (not trained on, marked as crowd for evaluation); images without objects are
kept. Category ids, which COCO leaves gaps in, become contiguous labels 0..K-1, and
`category_ids[label]` maps a prediction back. A file that is not JSON, a missing image, or an
annotation that names an unknown image or category is refused with one line naming the file.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .errors import DataError, read_rgb, require_path


@dataclass
class CocoImage:
    id: int
    path: Path
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)  # x1, y1, x2, y2, clipped to the image
    labels: list[int] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)


@dataclass
class CocoIndex:
    images: list[CocoImage]
    category_ids: list[int]  # label -> COCO category id
    category_names: list[str]
    dropped: int = 0  # boxes without area


def _read_json(path: Path) -> dict:
    require_path(path, "annotation file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"annotation file {str(path)!r} is not valid JSON ({error})") from None
    missing = [key for key in ("images", "annotations", "categories") if not isinstance(data, dict) or key not in data]
    if missing:
        raise DataError(f"annotation file {str(path)!r} has no {', '.join(missing)}: not COCO instances JSON")
    return data


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_coco(annotation_file: str | os.PathLike, image_dir: str | os.PathLike) -> CocoIndex:
    """Read and check one split; see the module's docstring for what is dropped and what is refused."""
    path, image_dir = Path(annotation_file), Path(image_dir)
    data = _read_json(path)
    require_path(image_dir, "image folder")
    for category in data["categories"]:
        if not (isinstance(category, dict) and _is_id(category.get("id")) and isinstance(category.get("name"), str)):
            raise DataError(f"category {category!r} of {str(path)!r} needs an integer id and a name (COCO's ids are "
                            f"integers, e.g. {{\"id\": 1, \"name\": \"person\"}})")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: label for label, c in enumerate(categories)}
    images = {}
    for record in data["images"]:
        try:
            if not _is_id(record["id"]):
                raise TypeError
            image = CocoImage(record["id"], image_dir / record["file_name"], int(record["width"]), int(record["height"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"image record {record!r} of {str(path)!r} lacks an integer id, a file_name, a width or "
                            f"a height") from None
        images[image.id] = image
    missing = [image.path for image in images.values() if not image.path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) listed in {str(path)!r} are missing, e.g. {str(missing[0])!r}")

    dropped = 0
    for annotation in data["annotations"]:
        where = f"annotation {annotation.get('id')} of {str(path)!r}"
        for key in ("image_id", "category_id"):
            value = annotation.get(key)
            if value is not None and not _is_id(value):
                raise DataError(f"{where} has {key} {value!r}, a {type(value).__name__}; COCO's ids are integers "
                                f"(e.g. \"{key}\": 3, not \"3\")")
        image = images.get(annotation.get("image_id"))
        if image is None:
            raise DataError(f"{where} names image {annotation.get('image_id')}, which the file does not list")
        if annotation.get("category_id") not in label_of:
            raise DataError(f"{where} names category {annotation.get('category_id')}, which the file does not list")
        box = annotation.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise DataError(f"{where} has bbox {box!r}; expected [x, y, width, height]")
        x, y, w, h = box
        x1, y1 = min(max(x, 0.0), image.width), min(max(y, 0.0), image.height)
        x2, y2 = min(max(x + w, 0.0), image.width), min(max(y + h, 0.0), image.height)
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            dropped += 1
            continue
        image.boxes.append([x1, y1, x2, y2])
        image.labels.append(label_of[annotation["category_id"]])
        image.crowd.append(bool(annotation.get("iscrowd", 0)))
    if dropped:
        warnings.warn(f"{dropped} box(es) in {str(path)!r} have no area inside their image and were dropped", stacklevel=2)
    ids = [c["id"] for c in categories]
    return CocoIndex(sorted(images.values(), key=lambda i: i.id), ids, [c["name"] for c in categories], dropped)


class CocoDetection(Dataset):
    """(image, target) pairs: a float CHW image in [0, 1], and boxes (x1, y1, x2, y2), labels,
    image_id and iscrowd. With `train`, crowd boxes are left out (RetinaNet would learn them)."""

    def __init__(self, index: CocoIndex, transform=None, train: bool = False) -> None:
        self.index, self.transform, self.train = index, transform, train

    def __len__(self) -> int:
        return len(self.index.images)

    def aspect_ratio(self, item: int) -> float:
        image = self.index.images[item]
        return image.width / image.height

    def __getitem__(self, item: int):
        from torchvision import tv_tensors

        record = self.index.images[item]
        keep = [i for i, crowd in enumerate(record.crowd) if not (self.train and crowd)]
        image = tv_tensors.Image(read_rgb(record.path))
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor([record.boxes[i] for i in keep], dtype=torch.float32).reshape(-1, 4),
                format="XYXY", canvas_size=(image.shape[-2], image.shape[-1]),
            ),
            "labels": torch.tensor([record.labels[i] for i in keep], dtype=torch.int64),
            "iscrowd": torch.tensor([record.crowd[i] for i in keep], dtype=torch.bool),
            "image_id": record.id,
        }
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image.float() / 255, target


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class ImageFiles(Dataset):
    """(image, info) pairs for prediction: a float CHW image in [0, 1] and its image_id, file_name and path.

    `images` are (image_id, path) pairs; `image_files(folder)` lists a folder's.
    """

    def __init__(self, images: list[tuple[int, Path]]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: int):
        image_id, path = self.images[item]
        image = read_rgb(path)
        return image.float() / 255, {"image_id": image_id, "file_name": path.name, "path": str(path)}


def image_files(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """The folder's images in name order, with ids: the file names' numbers where every name is one
    (COCO's 000000397133.jpg is image 397133, so results match its annotations), else 1..N."""
    folder = Path(folder)
    require_path(folder, "image folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise DataError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    numbers = [int(p.stem) if p.stem.isdigit() else None for p in paths]
    if None in numbers or len(set(numbers)) != len(numbers):
        numbers = list(range(1, len(paths) + 1))
    return list(zip(numbers, paths))
