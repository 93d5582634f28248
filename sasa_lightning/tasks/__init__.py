"""LightningModules: the training tasks."""

from .classification import ImageClassifier
from .detection import ObjectDetector
from .ema import EMA
from .reported_metrics import ReportedMetrics

__all__ = ["EMA", "ImageClassifier", "ObjectDetector", "ReportedMetrics", "TASKS"]

TASKS = (ImageClassifier, ObjectDetector)
