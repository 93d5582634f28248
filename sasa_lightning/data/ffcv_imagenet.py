"""FFCVImageNet: ImageNet-style classification from FFCV .beton files."""

from __future__ import annotations

from functools import partial

import numpy as np

from ..compat import start_ffcv_epoch
from .epoch_loader import EpochLoader
from .errors import DataError, require_path
from .image_module import ImageDataModule

BETON_FIELDS = ("image", "label")


def check_beton(path) -> int:
    """The number of samples; one clear line unless `path` is a complete .beton with 'image' and 'label' fields."""
    from ffcv.reader import Reader

    require_path(path, "FFCV file")
    try:
        reader = Reader(str(path))
        fields = tuple(reader.handlers)
    except Exception as error:  # FFCV raises assorted errors (struct, numpy, index) on bad files
        raise DataError(
            f"{str(path)!r} is not a readable FFCV file (truncated, or not written by 'sasa data write-ffcv'): {error}"
        ) from None
    if fields != BETON_FIELDS:
        raise DataError(f"FFCV file {str(path)!r} has fields {fields}; expected {BETON_FIELDS} (write it with 'sasa data write-ffcv')")
    return int(reader.num_samples)


def ffcv_epoch(loader, epoch: int, start: int, decoder=None, resolution_at=None):
    """Iterate FFCV `loader`'s batches of `epoch` from batch `start` on.

    FFCV counts epochs itself (next_epoch, from 0 in every process) and always starts an epoch
    at its first batch; this is Loader.__iter__ (ffcv 1.0.2) with the epoch and the first batch
    given, so a resumed run sees the order and the batches an uninterrupted one would.
    """
    from ffcv.pipeline.compiler import Compiler

    from .ffcv_epoch import JoinedEpochIterator

    if decoder is not None:
        size = resolution_at(epoch)
        decoder.output_size = (size, size)
    Compiler.set_num_threads(loader.num_workers)
    return JoinedEpochIterator(loader, start_ffcv_epoch(loader, epoch, start))


class FFCVImageNet(ImageDataModule):
    """Train/val .beton files (fields 'image', 'label'), decoded and augmented by FFCV.

    Progressive resizing (the FFCV ImageNet recipe): with min_resolution set, the training
    resolution grows linearly from min_resolution at ramp_start_epoch to `resolution` at
    ramp_end_epoch, in steps of resolution_step pixels.
    """

    default_worker_cap = None  # FFCV's workers are threads of this process: every usable core

    def __init__(
        self,
        train_path: str,
        val_path: str,
        num_classes: int,
        min_resolution: int | None = None,
        ramp_start_epoch: int = 0,
        ramp_end_epoch: int = 0,
        resolution_step: int = 32,
        **options,
    ) -> None:
        super().__init__(num_classes=num_classes, **options)
        self.train_path, self.val_path = train_path, val_path
        self.min_resolution, self.resolution_step = min_resolution, resolution_step
        self.ramp_start_epoch, self.ramp_end_epoch = ramp_start_epoch, ramp_end_epoch

    def resolution_at(self, epoch: int) -> int:
        if self.min_resolution is None or epoch >= self.ramp_end_epoch:
            return self.resolution
        if epoch <= self.ramp_start_epoch:
            return self.min_resolution
        fraction = (epoch - self.ramp_start_epoch) / (self.ramp_end_epoch - self.ramp_start_epoch)
        size = self.min_resolution + fraction * (self.resolution - self.min_resolution)
        return int(round(size / self.resolution_step)) * self.resolution_step

    def setup(self, stage: str | None = None) -> None:
        if stage == "fit":
            self.check_one_batch(check_beton(self.train_path), repr(self.train_path))
        self.val_samples = check_beton(self.val_path)

    def _image_tail(self):
        from ffcv.transforms import NormalizeImage, ToTensor, ToTorchImage

        # Keep the numba-jitted operations together: on a jitted -> not-jitted -> jitted
        # pipeline FFCV 1.0.2's Graph.group_operations never returns, so normalise before ToTensor.
        mean = np.array(self.mean) * 255
        std = np.array(self.std) * 255
        return [NormalizeImage(mean, std, np.float32), ToTensor(), ToTorchImage()]

    def _label_pipeline(self):
        from ffcv.fields.decoders import IntDecoder
        from ffcv.transforms import Squeeze, ToTensor

        return [IntDecoder(), ToTensor(), Squeeze(1)]

    def train_dataloader(self):
        from ffcv.fields.decoders import RandomResizedCropRGBImageDecoder
        from ffcv.loader import OrderOption
        from ffcv.transforms import RandomHorizontalFlip

        from .ffcv_loader import ffcv_loader

        size = self.resolution_at(0)
        decoder = RandomResizedCropRGBImageDecoder((size, size), scale=self.scale, ratio=self.ratio)
        image = [decoder] + ([RandomHorizontalFlip()] if self.flip else []) + self._image_tail()
        loader = ffcv_loader(
            self.train_path,
            batch_size=self.batch_size,
            num_workers=self.workers(),
            order=OrderOption.RANDOM,
            drop_last=True,
            seed=self.seed,
            distributed=self.replicas()[0] > 1,
            pipelines={"image": image, "label": self._label_pipeline()},
        )
        batches = partial(ffcv_epoch, loader, decoder=decoder, resolution_at=self.resolution_at)
        return EpochLoader(batches, len(loader), self.batch_size, start=self.batches_done)

    def val_dataloader(self):
        from ffcv.fields.decoders import CenterCropRGBImageDecoder
        from ffcv.loader import OrderOption

        from .ffcv_loader import ffcv_loader

        decoder = CenterCropRGBImageDecoder((self.val_resolution, self.val_resolution), ratio=self.val_crop_ratio)
        # Every sample exactly once across processes: FFCV's distributed mode pads with repeats,
        # so each rank reads every world_size-th sample instead.
        world_size, rank = self.replicas()
        loader = ffcv_loader(
            self.val_path,
            batch_size=self.batch_size,
            num_workers=self.workers(),
            order=OrderOption.SEQUENTIAL,
            drop_last=False,
            indices=np.arange(rank, self.val_samples, world_size),
            pipelines={"image": [decoder] + self._image_tail(), "label": self._label_pipeline()},
        )
        return EpochLoader(partial(ffcv_epoch, loader), len(loader), self.batch_size)

