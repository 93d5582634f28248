"""Lightning's DeepSpeed strategy, made to run on CPU as well (gloo), so DeepSpeed runs are tested in CI.

On CUDA this is Lightning's DeepSpeedStrategy with contiguous parameters. Lightning refuses any other
accelerator, but DeepSpeed itself trains on CPU with its CPU accelerator (it picks gloo by
itself): on CPU this class skips Lightning's CUDA check and GPU-index validation and places each
process on the CPU.
"""

from __future__ import annotations

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeedStrategy
from lightning.fabric.utilities.seed import reset_seed


class DeepSpeedStrategy(LightningDeepSpeedStrategy):
    def setup(self, trainer) -> None:
        stage = self.config.get("zero_optimization", {}).get("stage", 0) if isinstance(self.config, dict) else 0
        if stage == 3 and getattr(self.lightning_module, "ema", None) is not None:
            # ZeRO-3 leaves each process an empty placeholder per parameter, so an average of
            # model.state_dict() would silently stay at its initial value.
            raise ValueError(
                "the weight EMA needs whole parameters, which ZeRO stage 3 partitions; use ZeRO stage 1 or 2, "
                "or turn the EMA off with --model.init_args.ema_decay null"
            )
        # DeepSpeed broadcasts every parameter as flat bytes (p.data.view(torch.uint8)), which
        # needs contiguous memory; channels-last convolution weights are not. Inputs stay
        # channels-last, so convolutions still run in that layout.
        # (A channels-last 1x1 weight counts as contiguous yet has stride(-1) > 1, hence the test.)
        for param in self.lightning_module.parameters():
            if param.dim() and param.data.stride(-1) != 1:
                param.data = param.data.clone(memory_format=torch.contiguous_format)
        super().setup(trainer)

    def _on_cpu(self) -> bool:
        return isinstance(self.accelerator, CPUAccelerator)

    def setup_environment(self) -> None:
        if self._on_cpu():
            DDPStrategy.setup_environment(self)  # what Lightning's version does after its CUDA check
        else:
            super().setup_environment()

    def setup_distributed(self) -> None:
        if not self._on_cpu():
            return super().setup_distributed()
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        if self._on_cpu():
            return torch.device("cpu", self.local_rank)
        return super().root_device
