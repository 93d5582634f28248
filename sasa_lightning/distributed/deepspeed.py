"""Lightning's DeepSpeed strategy, made to run on CPU as well (gloo), so DeepSpeed runs are tested in CI.

On CUDA this is Lightning's DeepSpeedStrategy with contiguous parameters. Lightning refuses any other
accelerator, but DeepSpeed itself trains on CPU with its CPU accelerator (it picks gloo by
itself): on CPU this class skips Lightning's CUDA check and GPU-index validation and places each
process on the CPU.

Unlike DDP, DeepSpeed never broadcasts buffers after its start, so each process's batch-norm
statistics (and their EMA) drift apart with its own batches. Evaluation during training first
gives every process rank 0's buffers, as DDP does before each forward: the processes then score
their shares with one model, the one the checkpoint holds.

`precision="bf16-mixed"` means here what it means under DDP: fp32 weights, with the forward in
bf16 by torch.autocast (DeepSpeed's `torch_autocast` section), gradients and their reduction in
fp32. Lightning would turn on DeepSpeed's `bf16` mode instead, which casts every parameter to
bf16 and leaves the buffers in fp32: batch norm then refuses to mix bf16 weights with fp32
running statistics, and a weight EMA held in bf16 stops moving (a 0.9999 update rounds away).
A config that sets `bf16` or `torch_autocast` itself keeps what it sets.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies import DeepSpeedStrategy as LightningDeepSpeedStrategy
from lightning.fabric.utilities.seed import reset_seed
from ..errors import ConfigError
from .safe_load import check_deepspeed_checkpoint


BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


class _RecordingDict(dict):
    """A dict that remembers every key looked up in it, however it is looked up."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.read: set = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def pop(self, key, *default):
        self.read.add(key)
        return super().pop(key, *default)

    def keys(self):
        record = self.read

        class Keys(set):
            def __contains__(self, key) -> bool:
                record.add(key)
                return super().__contains__(key)

        return Keys(super().keys())


def check_deepspeed_config(config: dict) -> None:
    """One clear error for a top-level key DeepSpeed would silently ignore (`zero_optimisation`).

    The keys DeepSpeed knows are learnt from DeepSpeed itself: its DeepSpeedConfig parses a copy
    that records every lookup (a list of our own would go stale with each DeepSpeed release).
    The batch sizes are set by Lightning at setup, so the copy takes a placeholder for them.
    Nested sections are DeepSpeed's pydantic models, which already refuse unknown fields.
    """
    from deepspeed.runtime.config import DeepSpeedConfig

    probe = _RecordingDict({k: v for k, v in config.items() if k not in BATCH_KEYS}, train_micro_batch_size_per_gpu=1)
    DeepSpeedConfig(probe)
    unknown = sorted(set(config) - probe.read - set(BATCH_KEYS))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(probe.read), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"DeepSpeed config key {key!r} is not one DeepSpeed reads ({hint}DeepSpeed would silently ignore it)")


class DeepSpeedStrategy(LightningDeepSpeedStrategy):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.config, dict):  # given as a dict or a JSON file (Lightning has loaded it)
            check_deepspeed_config(self.config)

    def _format_config(self) -> None:
        if self.precision_plugin.precision == "bf16-mixed" and not {"bf16", "torch_autocast"} & set(self.config):
            # Empty safe-module list: no gradient is communicated in bf16.
            self.config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
            self.config["bf16"] = {"enabled": False}
        super()._format_config()

    def setup(self, trainer) -> None:
        stage = self.config.get("zero_optimization", {}).get("stage", 0) if isinstance(self.config, dict) else 0
        if stage == 3 and getattr(self.lightning_module, "ema", None) is not None:
            # ZeRO-3 leaves each process an empty placeholder per parameter, so an average of
            # model.state_dict() would silently stay at its initial value.
            raise ConfigError(
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

    def teardown(self) -> None:
        engine = self.model
        super().teardown()
        # The engine's gradient-accumulation hooks reach it back through C++ autograd nodes, a
        # cycle the garbage collector cannot see: without destroy() the engine, the model and
        # DeepSpeed's process groups (with gloo's threads) live until exit (see process_group.py).
        # The module is unwrapped as DDPStrategy does: every setup builds a new engine.
        if engine is not None and engine is not self.lightning_module:
            engine.destroy()
            self.model = self.lightning_module

    def load_checkpoint(self, checkpoint_path, weights_only=None) -> dict:
        # DeepSpeed unpickles the directory's files with weights_only=False: check them first.
        if Path(checkpoint_path).is_dir():
            check_deepspeed_checkpoint(checkpoint_path)
        return super().load_checkpoint(checkpoint_path, weights_only)

    def on_validation_start(self) -> None:
        super().on_validation_start()
        self._broadcast_buffers()

    def on_test_start(self) -> None:
        super().on_test_start()
        self._broadcast_buffers()

    def _broadcast_buffers(self) -> None:
        if self.world_size > 1:
            for buffer in self.lightning_module.buffers():
                torch.distributed.broadcast(buffer, src=0)

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
