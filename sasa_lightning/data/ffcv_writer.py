"""`sasa data write-ffcv`: an ImageFolder tree to an FFCV .beton file, atomically."""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import atomic_write, make_parent
from .errors import DataError, require_path
from .image_folder import open_image_folder


def write_ffcv(
    src: str | os.PathLike,
    out: str | os.PathLike,
    max_resolution: int = 256,
    jpeg_quality: int = 90,
    num_workers: int | None = None,
) -> Path:
    """Write every image of the ImageFolder `src` (class folders of images) to the .beton `out`.

    Images are stored as JPEG with their longer side at most max_resolution. The file is written
    under a temporary name beside `out` and renamed when complete, so an interrupted write never
    leaves a file that looks finished. An image that does not decode stops the write with a
    DataError naming it, a full disk with the OSError naming `out`.
    """
    from ffcv.fields import IntField, RGBImageField

    from .ffcv_guarded_writer import GuardedDatasetWriter

    require_path(src, "image folder")
    if not 1 <= jpeg_quality <= 100:
        raise DataError(f"jpeg_quality must be between 1 and 100, got {jpeg_quality}")
    if max_resolution < 8:
        raise DataError(f"max_resolution must be at least 8 pixels, got {max_resolution}")
    dataset = open_image_folder(src)
    out = Path(out)
    make_parent(out)
    fields = {
        "image": RGBImageField(write_mode="jpg", max_resolution=max_resolution, jpeg_quality=jpeg_quality),
        "label": IntField(),
    }
    workers = num_workers or os.cpu_count() or 1
    try:
        return atomic_write(
            out, lambda partial: GuardedDatasetWriter(str(partial), fields, num_workers=workers).from_indexed_dataset(dataset)
        )
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(error.errno, f"{error.strerror} (writing the .beton file)", str(out)) from None

