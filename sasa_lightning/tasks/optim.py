"""The paper's optimisation recipe: SGD + Nesterov, LR per 256 images, linear warm-up then cosine."""

from __future__ import annotations

import math

from torch import nn

NORM_TYPES = (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weight decay for weights, none for norms, biases and position embeddings.

    Modules name the parameters that take no decay in a `no_weight_decay` tuple (the relative
    and absolute position embeddings of the attention layers and the stem).
    """
    decay, no_decay = [], []
    for module in model.modules():
        exempt = getattr(module, "no_weight_decay", ())
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if isinstance(module, NORM_TYPES) or name == "bias" or name in exempt:
                no_decay.append(param)
            else:
                decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def scaled_learning_rate(lr_per_256: float, global_batch_size: int) -> float:
    """The linear scaling rule: the paper's 1.6 at batch 4096 is 0.1 per 256 images."""
    return lr_per_256 * global_batch_size / 256


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear from ~0 to 1 over warmup_steps, then cosine to 0 at total_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
