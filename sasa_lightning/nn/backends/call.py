"""What a backend is asked to run, as its can_run sees it."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Call:
    device: torch.device
    dtype: torch.dtype
    head_dim: int
    kernel_size: int
    needs_grad: bool  # gradients will flow back through the call (training)
