"""LightningModules: the training tasks."""

from .classification import ImageClassifier
from .ema import EMA
from .weights import CheckpointError

__all__ = ["CheckpointError", "EMA", "ImageClassifier"]
