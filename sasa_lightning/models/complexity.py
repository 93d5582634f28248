"""Analytic parameter and FLOP counts, by the paper's convention (one multiply-add = 2 FLOPs).

Counted: convolutions, linear layers and the attention modules (projections plus k^2 * d per
pixel for each of q.k, q.r and the weighted sum, at the attention's input resolution). Not
counted, as in the paper's baseline numbers: normalisation, activations, pooling, additions.
The forward pass runs on the meta device, so it costs no memory or arithmetic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Complexity:
    params: int
    flops: int

    @property
    def params_m(self) -> float:
        return self.params / 1e6

    @property
    def gflops(self) -> float:
        return self.flops / 1e9


def _module_macs(module: nn.Module, inputs: tuple, output) -> int:
    if hasattr(module, "attention_macs"):
        return module.attention_macs(*inputs[0].shape[-2:])
    if isinstance(module, nn.Conv2d):
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        return output[0].numel() * per_output
    if isinstance(module, nn.Linear):
        return output[0].numel() * module.in_features
    return 0


def complexity(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> Complexity:
    """Parameters and FLOPs of one forward pass on one image of input_size (C, H, W).

    A RetinaNet counts its network (backbone, FPN, heads) on an image of input_size, without the
    resizing and post-processing around it.
    """
    from torchvision.models.detection import RetinaNet

    from .retinanet import DenseDetectorCore

    if isinstance(model, RetinaNet):
        model = DenseDetectorCore(model)
    params = sum(p.numel() for p in model.parameters())
    meta_model = copy.deepcopy(model).to("meta").eval()
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        macs += _module_macs(module, inputs, output)

    for module in meta_model.modules():
        module.register_forward_hook(count)
    with torch.no_grad():
        meta_model(torch.empty((1, *input_size), device="meta"))
    return Complexity(params=params, flops=2 * macs)
