"""The options every image-classification DataModule shares."""

from __future__ import annotations

from typing import Sequence

import lightning as L

from ..errors import ConfigError
from .epoch_loader import batches_done, replicas
from .errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageDataModule(L.LightningDataModule):
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
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        self.num_classes, self.batch_size, self.num_workers = num_classes, batch_size, num_workers
        self.resolution, self.val_resolution, self.val_crop_ratio = resolution, val_resolution, val_crop_ratio
        self.scale, self.ratio, self.flip = tuple(scale), tuple(ratio), flip
        self.mean, self.std, self.seed = tuple(mean), tuple(std), seed

    def replicas(self) -> tuple[int, int]:
        return replicas(self.trainer)

    def batches_done(self) -> int:
        return batches_done(self.trainer)

    def check_one_batch(self, images: int, where: str) -> None:
        """Training drops incomplete batches, so fewer images than one batch would train nothing."""
        if images < self.batch_size:
            raise DataError(
                f"{where} has {images} training images, fewer than one batch of {self.batch_size}; "
                f"lower --data.init_args.batch_size or add images"
            )
