"""An exponential moving average of a model's weights (the paper: decay 0.9999)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from ..errors import ConfigError


class EMA(nn.Module):
    """Holds a frozen copy of `model` whose tensors follow the model's: ema = d * ema + (1 - d) * w.

    The decay warms up as min(decay, (1 + n) / (10 + n)) after n updates (as TensorFlow's and
    timm's EMA do), so short runs are not dominated by the random initialisation. Buffers (batch
    norm statistics) are averaged too; integer buffers are copied.

    The average is kept in float32 whatever the model's dtype: with decay 0.9999 an update moves a
    weight by 1e-4 of its distance to the model's, which rounds away in bf16 (8 bits of mantissa),
    so an EMA cast to bf16 with the model (bf16-true, or DeepSpeed's bf16 mode) would stop moving.
    The task calls `keep_float32()` once the strategy has cast the module.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0 < decay < 1:
            raise ConfigError(f"EMA decay must be between 0 and 1, got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def keep_float32(self) -> None:
        """Undo a cast of the average to a lower precision (the model itself stays as it is)."""
        for tensor in (*self.module.parameters(), *self.module.buffers()):
            if tensor.dtype.is_floating_point and tensor.dtype != torch.float32:
                tensor.data = tensor.data.float()

    @property
    def dtype(self) -> torch.dtype:
        return next(self.module.parameters()).dtype

    def current_decay(self) -> float:
        n = int(self.updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        for average, value in zip(self.module.state_dict().values(), model.state_dict().values()):
            if average.dtype.is_floating_point:
                average.lerp_(value.to(average.dtype), 1 - decay)
            else:
                average.copy_(value)
        self.updates += 1
