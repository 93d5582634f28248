"""Data: the FFCV writer and reader checks, image folders, the epoch-following loader, the demo data."""

import numpy as np
import pytest
import torch
from PIL import Image

from sasa_lightning.data import DataError, FFCVImageNet, ImageFolderData, write_ffcv
from sasa_lightning.data.ffcv_imagenet import check_beton
from sasa_lightning.data.image_folder import EpochSeededSampler, open_image_folder


def make_image_folder(root, classes=3, per_class=6, size=20):
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            pixels = rng.integers(0, 255, (size, size + 4, 3), dtype=np.uint8)
            pixels[..., label] = 255  # a class-dependent colour
            Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffcv")
    folder = make_image_folder(root / "images")
    train = write_ffcv(folder, root / "train.beton", max_resolution=16, num_workers=1)
    return {"folder": folder, "train": train, "root": root}


def test_writer_stores_every_image_and_label(betons):
    check_beton(betons["train"])
    module = FFCVImageNet(str(betons["train"]), str(betons["train"]), num_classes=3, batch_size=4, num_workers=1,
                          resolution=16, val_resolution=16, val_crop_ratio=1.0)
    module.setup("validate")
    images, labels = [], []
    for x, y in module.val_dataloader():
        images.append(x)
        labels.append(y)
    labels = torch.cat(labels)
    assert torch.cat(images).shape == (18, 3, 16, 16)
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6 + [2] * 6


def test_write_progress_prints_lines_in_a_log_and_a_last_line(monkeypatch):
    import io

    from sasa_lightning.data import write_progress

    clock = iter([0.0, 10.0, 20.0, 40.0, 41.0])
    monkeypatch.setattr(write_progress.time, "monotonic", lambda: next(clock))
    log = io.StringIO()  # not a terminal: a log file, as SLURM's output is
    progress = write_progress.WriteProgress(3000, every_seconds=15.0, stream=log)
    progress.update(500)  # at 10 s: not yet a line
    progress.update(1000)  # at 20 s
    progress.update(3000)  # at 40 s: done, the last line says so
    progress.close()
    assert log.getvalue().splitlines() == ["written 1,000/3,000 images  50 images/s  40 s left",
                                           "written 3,000 images in 41.0 s (73 images/s)"]


def test_interrupted_write_leaves_no_file(betons, monkeypatch):
    from ffcv.writer import DatasetWriter

    def interrupted(self, dataset, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(DatasetWriter, "from_indexed_dataset", interrupted)
    out = betons["root"] / "interrupted.beton"
    with pytest.raises(KeyboardInterrupt):
        write_ffcv(betons["folder"], out, num_workers=1)
    assert not out.exists()
    assert not list(betons["root"].glob(".interrupted.beton.partial-*"))


def test_bad_betons_are_refused_with_one_line(betons, tmp_path):
    data = betons["train"].read_bytes()
    (tmp_path / "truncated.beton").write_bytes(data[: len(data) // 3])
    (tmp_path / "noise.beton").write_bytes(bytes(1000))
    for name in ("truncated", "noise"):
        with pytest.raises(DataError, match=f"{name}.beton' is not a readable FFCV file"):
            check_beton(tmp_path / f"{name}.beton")
    with pytest.raises(DataError, match="does not exist"):
        check_beton(tmp_path / "missing.beton")


def test_beton_without_the_expected_fields_is_refused(tmp_path):
    from ffcv.fields import IntField
    from ffcv.writer import DatasetWriter

    class Numbers(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, index):
            return (index,)

    path = tmp_path / "numbers.beton"
    DatasetWriter(str(path), {"number": IntField()}, num_workers=1).from_indexed_dataset(Numbers())
    with pytest.raises(DataError, match=r"has fields \('number',\); expected \('image', 'label'\)"):
        check_beton(path)


def test_empty_or_missing_image_folder_is_refused(tmp_path):
    (tmp_path / "empty" / "class0").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        open_image_folder(tmp_path / "empty")
    with pytest.raises(DataError, match="does not exist"):
        write_ffcv(tmp_path / "nowhere", tmp_path / "x.beton")


def first_epoch_labels(module, epoch):
    loader = module.train_dataloader()
    loader.sampler.set_epoch(epoch)  # what Lightning does before every epoch
    return torch.cat([y for _, y in loader]).tolist()


@pytest.mark.slow
def test_ffcv_epoch_order_follows_the_epoch_lightning_sets(betons):
    """A resumed run (a new loader at epoch 3) sees the order an uninterrupted run sees at epoch 3."""
    def module():
        m = FFCVImageNet(str(betons["train"]), str(betons["train"]), num_classes=3, batch_size=3, num_workers=1,
                         resolution=16, seed=7)
        m.setup("fit")
        return m

    order_epoch3 = first_epoch_labels(module(), 3)
    assert first_epoch_labels(module(), 3) == order_epoch3
    orders = {tuple(first_epoch_labels(module(), epoch)) for epoch in range(4)}
    assert len(orders) > 1


def test_ffcv_loaders_leave_numba_shared_array_types_alone(betons):
    """FFCV's OS cache manager wrote `mutable = False` on numba's interned uint8 array type.

    That re-hashed a key of every dispatcher compiled for such arrays, so numba's finalizer
    raised KeyError walking their overloads ("Exception ignored in: <finalize object>").
    """
    import numba as nb
    from ffcv.loader import OrderOption

    from sasa_lightning.data.ffcv_loader import ffcv_loader

    @nb.njit
    def first(array):
        return array[0]

    first(np.zeros(3, np.uint8))
    shared = nb.uint8[::1]
    loader = ffcv_loader(str(betons["train"]), batch_size=6, num_workers=1, order=OrderOption.SEQUENTIAL)
    assert sum(len(labels) for _, labels in loader) == 18
    assert shared.mutable and nb.uint8[::1] is shared
    assert len(list(first.overloads.values())) == 1  # the finalizer's walk


def test_progressive_resizing_schedule():
    module = FFCVImageNet("a", "b", num_classes=2, resolution=192, min_resolution=128, ramp_start_epoch=10, ramp_end_epoch=20)
    assert [module.resolution_at(e) for e in (0, 10, 12, 15, 19, 20, 30)] == [128, 128, 128, 160, 192, 192, 192]


def test_image_folder_order_and_augmentation_depend_only_on_seed_and_epoch(betons):
    def batches(epoch):
        module = ImageFolderData(str(betons["folder"]), str(betons["folder"]), num_classes=3, batch_size=6,
                                 num_workers=0, resolution=16, val_resolution=16)
        module.setup("fit")
        loader = module.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return [x for x, _ in loader]

    first, again = batches(2), batches(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, batches(3)))
    assert isinstance(EpochSeededSampler(list(range(5)), 0), torch.utils.data.DistributedSampler)
