"""Training-loader throughput: FFCVImageNet vs ImageFolderData on the same JPEGs, same augmentations.

Both run the ImageNet training pipeline (RandomResizedCrop 224, horizontal flip, normalise) over
N synthetic 400x300 JPEGs. FFCV's first epoch includes numba compilation, so the median of the
epochs after it is reported, for both; the ImageFolder DataLoader uses as many worker processes as there are cores.

    python benchmarks/data.py              # or: sasa bench data
    python benchmarks/data.py --images 300 --epochs 2   # a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import write_report

RESULTS = Path(__file__).parent / "results"


def write_jpegs(root: Path, images: int, classes: int = 10) -> None:
    """Smooth colour fields with noise and shapes: JPEG sizes and decode costs like photographs'."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:300, 0:400]
    for index in range(images):
        folder = root / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        base = np.stack([np.sin(x / rng.uniform(20, 80) + c) * np.cos(y / rng.uniform(20, 80)) for c in range(3)], -1)
        pixels = ((base + 1) * 100 + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.integers(0, 350), rng.integers(0, 250)
            draw.ellipse([x0, y0, x0 + rng.integers(20, 120), y0 + rng.integers(20, 120)], fill=tuple(rng.integers(0, 255, 3).tolist()))
        image.save(folder / f"{index:05d}.jpg", quality=90)


def images_per_second(loader, epochs: int, set_epoch) -> list[float]:
    rates = []
    for epoch in range(epochs):
        set_epoch(epoch)
        start, count = time.perf_counter(), 0
        for images, _ in loader:
            count += images.shape[0]
        rates.append(count / (time.perf_counter() - start))
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6, help="epochs per loader; the median after the first is reported")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/data-cpu.json)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (FFCV's first epoch compiles its pipeline)")

    from sasa_lightning.data import FFCVImageNet, ImageFolderData, write_ffcv

    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as scratch:
        folder, beton = Path(scratch) / "images", Path(scratch) / "train.beton"
        write_jpegs(folder, args.images)
        write_ffcv(folder, beton, max_resolution=256, jpeg_quality=90, num_workers=workers)
        common = dict(num_classes=10, batch_size=args.batch_size, num_workers=workers)

        ffcv = FFCVImageNet(str(beton), str(beton), **common)
        ffcv.setup("fit")
        ffcv_loader = ffcv.train_dataloader()
        ffcv_rates = images_per_second(ffcv_loader, args.epochs, ffcv_loader.set_epoch)

        folder_data = ImageFolderData(str(folder), str(folder), **common)
        folder_data.setup("fit")
        folder_loader = folder_data.train_dataloader()
        folder_rates = images_per_second(folder_loader, args.epochs, folder_loader.sampler.set_epoch)

    # An epoch lasts about a second, so one slow epoch on a shared machine moves a mean: take medians.
    ffcv_steady = float(np.median(ffcv_rates[1:]))
    folder_steady = float(np.median(folder_rates[1:]))
    print(f"{'loader':>14} {'first epoch img/s':>18} {'later epochs img/s':>19}")
    print(f"{'FFCV':>14} {ffcv_rates[0]:18.0f} {ffcv_steady:19.0f}")
    print(f"{'ImageFolder':>14} {folder_rates[0]:18.0f} {folder_steady:19.0f}")
    print(f"FFCV / ImageFolder after the first epoch: {ffcv_steady / folder_steady:.1f}x")
    write_report(
        args.out or RESULTS / "data-cpu.json",
        "data",
        images=args.images,
        batch_size=args.batch_size,
        workers=workers,
        pipeline="RandomResizedCrop 224 + flip + normalise, 400x300 JPEGs (stored at max side 256 in the .beton)",
        ffcv_images_per_s=ffcv_rates,
        image_folder_images_per_s=folder_rates,
        ratio_after_first_epoch=ffcv_steady / folder_steady,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
