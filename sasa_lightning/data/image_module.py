"""The options every image-classification DataModule shares."""

from __future__ import annotations

from typing import Sequence

from .data_module import DataModule

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDataModule(DataModule):
    """Batch size is per device; the model's learning rate scales with the global batch.

    Train: RandomResizedCrop(resolution, scale, ratio), horizontal flip (if flip), normalise.
    Val: resize to val_resolution / val_crop_ratio, centre crop val_resolution (224 of 256).
    """

    def __init__(
        self,
        num_classes: int,
        batch_size: int = 256,
        num_workers: int | None = None,
        resolution: int = 224,
        val_resolution: int = 224,
        val_crop_ratio: float = 224 / 256,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.num_classes = num_classes
        self.resolution, self.val_resolution, self.val_crop_ratio = resolution, val_resolution, val_crop_ratio
        self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), flip
        self.mean, self.std = tuple(mean), tuple(std)
