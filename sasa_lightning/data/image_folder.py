"""Image folders: opening them with clear errors, and `ImageFolderData` for people without FFCV."""

from __future__ import annotations

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .epoch_loader import EpochLoader
from .errors import DataError, open_pil_rgb, require_path
from .image_module import ImageDataModule


def open_image_folder(root, transform=None):
    """torchvision's ImageFolder, with one clear line when the folder is missing or has no images."""
    from torchvision.datasets import ImageFolder

    require_path(root, "image folder")
    try:
        return ImageFolder(str(root), transform=transform, loader=open_pil_rgb)
    except (FileNotFoundError, RuntimeError) as error:
        raise DataError(f"image folder {str(root)!r} holds no images in class sub-folders ({error})") from None


class EpochSeededSampler(DistributedSampler):
    """This rank's shard of an order that depends only on (seed, epoch), with a seed per sample.

    Yields (index, sample_seed). The order and shards are DistributedSampler's (shuffled by
    seed + epoch, incomplete batches dropped); each sample's seed is drawn from (seed, epoch) and
    keyed by its index. With SeededTransformDataset, a sample's random augmentation is then the
    same whatever the number of workers or processes, so a resumed run sees the batches an
    uninterrupted run would have seen.
    """

    def __init__(self, dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0  # samples of this rank's shard to skip (a run resumed mid-epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        sample_seeds = torch.randint(0, 2**62, (len(self.dataset),), generator=generator).tolist()
        return ((index, sample_seeds[index]) for index in list(super().__iter__())[self.start :])


class SeededTransformDataset(Dataset):
    """Applies `transform` to `dataset[index]`; given (index, seed) it draws the randomness from seed."""

    def __init__(self, dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self.dataset[index]
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


class ImageFolderData(ImageDataModule):
    """ImageFolder trees (`train_dir`, `val_dir`) with the same augmentations as FFCVImageNet.

    num_classes defaults to the number of class folders in train_dir.
    """

    def __init__(self, train_dir: str, val_dir: str, num_classes: int | None = None, **options) -> None:
        if num_classes is None:
            num_classes = len(open_image_folder(train_dir).classes)
        super().__init__(num_classes=num_classes, **options)
        self.train_dir, self.val_dir = train_dir, val_dir

    def _transforms(self, train: bool):
        from torchvision import transforms as T

        normalise = [T.ToTensor(), T.Normalize(self.mean, self.std)]
        if train:
            augment = [T.RandomResizedCrop(self.resolution, scale=self.scale, ratio=self.ratio)]
            if self.flip:
                augment.append(T.RandomHorizontalFlip())
            return T.Compose(augment + normalise)
        resize = round(self.val_resolution / self.val_crop_ratio)
        return T.Compose([T.Resize(resize), T.CenterCrop(self.val_resolution)] + normalise)

    def setup(self, stage: str | None = None) -> None:
        self.train_set = SeededTransformDataset(open_image_folder(self.train_dir), self._transforms(train=True))
        self.val_set = SeededTransformDataset(open_image_folder(self.val_dir), self._transforms(train=False))
        self.check_one_batch(len(self.train_set), repr(self.train_dir))
        for name, dataset in (("train_dir", self.train_set), ("val_dir", self.val_set)):
            if len(dataset.dataset.classes) > self.num_classes:
                raise DataError(f"{name} has {len(dataset.dataset.classes)} classes but num_classes is {self.num_classes}")

    def train_dataloader(self) -> EpochLoader:
        world_size, rank = self.replicas()
        sampler = EpochSeededSampler(self.train_set, self.seed, num_replicas=world_size, rank=rank)
        loader = self._loader(self.train_set, sampler=sampler, drop_last=True)

        def batches(epoch: int, start: int) -> DataLoader:
            sampler.set_epoch(epoch)
            sampler.start = start * self.batch_size
            return loader

        return EpochLoader(batches, len(loader), self.batch_size, start=self.batches_done)

    def val_dataloader(self) -> DataLoader:
        # Every sample exactly once across processes (DistributedSampler would pad with repeats).
        world_size, rank = self.replicas()
        sampler = UnrepeatedDistributedSampler(self.val_set, num_replicas=world_size, rank=rank, shuffle=False)
        return self._loader(self.val_set, sampler=sampler)

    def _loader(self, dataset, **options) -> DataLoader:
        workers = self.workers()
        return DataLoader(
            dataset, batch_size=self.batch_size, num_workers=workers, persistent_workers=workers > 0, **options
        )
