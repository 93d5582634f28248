"""The built-in demo data: scikit-learn's 1,797 handwritten digits, trained through FFCV.

Real scans of digits (8x8 grey, 10 classes) ship inside scikit-learn, so the demo needs no
download. They are upsampled to 32x32 RGB, split 80/20 (stratified, fixed seed), written once to
an ImageFolder and to .beton files under a cache directory, and then read exactly as ImageNet is.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_dir
from .ffcv_imagenet import FFCVImageNet
from .ffcv_writer import write_ffcv

DIGITS_MEAN = (0.305,) * 3  # of the upsampled training images
DIGITS_STD = (0.323,) * 3
VAL_FRACTION = 0.2


def default_cache_dir() -> Path:
    return Path(os.environ.get("SASA_CACHE", Path.home() / ".cache" / "sasa-lightning"))


def write_digits_image_folder(root: Path, image_size: int = 32, seed: int = 0) -> None:
    """root/{train,val}/<digit>/<index>.png, written whole or not at all (atomic_dir)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    val = np.zeros(len(digits.target), dtype=bool)
    for label in range(10):
        members = np.flatnonzero(digits.target == label)
        val[rng.choice(members, size=round(VAL_FRACTION * len(members)), replace=False)] = True
    with atomic_dir(root) as partial:
        for index, (image, label) in enumerate(zip(digits.images, digits.target)):
            folder = partial / ("val" if val[index] else "train") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            grey = Image.fromarray(np.uint8(image * (255 / 16))).resize((image_size, image_size), Image.BILINEAR)
            grey.convert("RGB").save(folder / f"{index:04d}.png")


def prepare_digits(cache_dir: str | os.PathLike | None = None, image_size: int = 32) -> dict[str, Path]:
    """Write the ImageFolder and the .beton files once; return their paths."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = root / f"digits{image_size}"
    paths = {split: root / f"digits{image_size}_{split}.beton" for split in ("train", "val")}
    if not (folder / "val").is_dir():
        write_digits_image_folder(folder, image_size)
    for split, path in paths.items():
        if not path.exists():
            write_ffcv(folder / split, path, max_resolution=image_size, jpeg_quality=95, num_workers=1)
    return {"image_folder": folder, **paths}


class DigitsData(FFCVImageNet):
    """The digits demo through the FFCV path (no flips: a mirrored digit is another symbol)."""

    def __init__(
        self,
        cache_dir: str | None = None,
        image_size: int = 32,
        batch_size: int = 64,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (0.85, 1.18),
        flip: bool = False,
        mean: tuple[float, float, float] = DIGITS_MEAN,
        std: tuple[float, float, float] = DIGITS_STD,
        **options,
    ) -> None:
        self.cache_dir, self.image_size = cache_dir, image_size
        root = Path(cache_dir) if cache_dir else default_cache_dir()
        super().__init__(
            train_path=str(root / f"digits{image_size}_train.beton"),
            val_path=str(root / f"digits{image_size}_val.beton"),
            num_classes=10,
            batch_size=batch_size,
            resolution=image_size,
            val_resolution=image_size,
            val_crop_ratio=1.0,
            scale=scale,
            ratio=ratio,
            flip=flip,
            mean=mean,
            std=std,
            **options,
        )

    def prepare_data(self) -> None:
        prepare_digits(self.cache_dir, self.image_size)
