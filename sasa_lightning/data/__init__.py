"""DataModules and dataset writers (FFCV, ImageFolder, the built-in demo data)."""

from .digits import DigitsData, prepare_digits
from .errors import DataError
from .ffcv_imagenet import FFCVImageNet
from .ffcv_writer import write_ffcv
from .image_folder import ImageFolderData

__all__ = ["DataError", "DigitsData", "FFCVImageNet", "ImageFolderData", "prepare_digits", "write_ffcv"]
