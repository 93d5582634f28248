"""DataModules and dataset writers (FFCV, ImageFolder, the built-in demo data sets)."""

from .coco_module import COCODetectionData
from .digits import DigitsData, prepare_digits
from .errors import DataError
from .ffcv_imagenet import FFCVImageNet
from .ffcv_writer import write_ffcv
from .image_folder import ImageFolderData
from .shapes import make_shapes

__all__ = ["COCODetectionData", "DataError", "DigitsData", "FFCVImageNet", "ImageFolderData", "make_shapes", "prepare_digits", "write_ffcv"]
