"""COCODetectionData: the COCO layout as a LightningDataModule, with the paper's augmentation."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, DistributedSampler

from .coco import CocoDetection, ImageFiles, image_files, load_coco
from .data_module import DataModule
from .epoch_loader import EpochLoader
from .errors import DataError


def collate(batch):
    """Images of different sizes stay a list: the detector resizes and pads them itself."""
    images, targets = zip(*batch)
    return list(images), list(targets)


def train_transform(max_size: int, scale_range: Sequence[float], flip: float):
    """Paper A.3: multiscale jitter, a random crop to a side of at most max_size, horizontal flip."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    from ..compat import query_size

    class RandomCropToMaxSide(v2.Transform):
        def make_params(self, flat_inputs):
            height, width = query_size(flat_inputs)
            crop_h, crop_w = min(height, max_size), min(width, max_size)
            top = int(torch.randint(0, height - crop_h + 1, ()))
            left = int(torch.randint(0, width - crop_w + 1, ()))
            return {"top": top, "left": left, "height": crop_h, "width": crop_w}

        def transform(self, inpt, params):
            return self._call_kernel(F.crop, inpt, **params)

    return v2.Compose([
        v2.ScaleJitter((max_size, max_size), scale_range=tuple(scale_range)),
        RandomCropToMaxSide(),
        v2.RandomHorizontalFlip(flip),
        # Boxes cut away by the crop go, with their labels and crowd flags.
        v2.SanitizeBoundingBoxes(labels_getter=lambda inputs: (inputs[1]["labels"], inputs[1]["iscrowd"])),
    ])


class AspectGroupedBatches:
    """Batches of this rank's shard in which every image has the same orientation (landscape or
    portrait), so the detector pads less.

    How many full batches the groups make depends on the epoch's shuffle; every epoch gives the
    number it is sure to reach (one per group fewer than the shard would fill), so that every
    epoch and every process has the same length.
    """

    def __init__(self, sampler: DistributedSampler, landscape: list[bool], batch_size: int) -> None:
        self.sampler, self.landscape, self.batch_size = sampler, landscape, batch_size
        groups = len(set(landscape))
        self.length = max(0, len(sampler) // batch_size - (groups - 1))

    def batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        groups: dict[bool, list[int]] = {True: [], False: []}
        batches = []
        for index in self.sampler:
            group = groups[self.landscape[index]]
            group.append(index)
            if len(group) == self.batch_size:
                batches.append(list(group))
                group.clear()
        return batches[: self.length]

    def __len__(self) -> int:
        return self.length


class COCODetectionData(DataModule):
    """`root/annotations/instances_<split>.json` and `root/<split>/` images (COCO 2017 layout).

    Batch size is per device. Training: ScaleJitter by scale_range around max_size, a random crop
    of at most max_size per side, horizontal flip with probability flip, batches grouped by
    orientation. Validation: the images as they are (the detector resizes them), each counted
    once across processes. Prediction: the images of predict_dir, or else of the validation split
    (with its image ids, so the results can be scored against its annotations).
    """

    def __init__(
        self,
        root: str,
        train_split: str = "train2017",
        val_split: str = "val2017",
        batch_size: int = 8,
        num_workers: int | None = None,
        max_size: int = 640,
        scale_range: Sequence[float] = (0.8, 1.2),
        flip: float = 0.5,
        seed: int = 0,
        predict_dir: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.root, self.train_split, self.val_split = Path(root), train_split, val_split
        self.max_size, self.scale_range, self.flip = max_size, tuple(scale_range), flip
        self.predict_dir = predict_dir
        self.val_index = self._load(val_split)
        self.num_classes = len(self.val_index.category_ids)
        self.category_ids, self.category_names = self.val_index.category_ids, self.val_index.category_names

    def _load(self, split: str):
        return load_coco(self.root / "annotations" / f"instances_{split}.json", self.root / split)

    def setup(self, stage: str | None = None) -> None:
        self.val_set = CocoDetection(self.val_index)
        if stage == "predict":
            found = image_files(self.predict_dir) if self.predict_dir else [(i.id, i.path) for i in self.val_index.images]
            self.predict_set = ImageFiles(found)
        if stage == "fit":
            train_index = self._load(self.train_split)
            if train_index.category_ids != self.category_ids:
                raise DataError(f"the {self.train_split} and {self.val_split} annotation files list different categories")
            self.check_one_batch(len(train_index.images), self.train_split, what="images")
            self.train_set = CocoDetection(train_index, train_transform(self.max_size, self.scale_range, self.flip), train=True)

    def train_dataloader(self) -> EpochLoader:
        world_size, rank = self.replicas()
        sampler = DistributedSampler(self.train_set, world_size, rank, shuffle=True, seed=self.seed, drop_last=True)
        landscape = [image.width >= image.height for image in self.train_set.index.images]
        grouped = AspectGroupedBatches(sampler, landscape, self.batch_size)
        workers = self.workers()

        def batches(epoch: int, start: int) -> DataLoader:
            return DataLoader(self.train_set, batch_sampler=grouped.batches(epoch)[start:], num_workers=workers,
                              collate_fn=collate)

        return EpochLoader(batches, len(grouped), self.batch_size, start=self.batches_done)

    def _each_image_once(self, dataset) -> DataLoader:
        world_size, rank = self.replicas()
        sampler = UnrepeatedDistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.workers(),
                          collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        return self._each_image_once(self.val_set)

    def predict_dataloader(self) -> DataLoader:
        return self._each_image_once(self.predict_set)
