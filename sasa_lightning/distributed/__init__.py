"""Strategy presets and shims for distributed training."""

from .deepspeed import DeepSpeedStrategy

__all__ = ["DeepSpeedStrategy"]
