"""Every use of another library's private or internal API, in one place.

The package reaches into Lightning's loop progress, accelerator connector and CLI config, FFCV's
Loader, epoch iterator, memory manager and writer, torchvision's transform helpers, torch's
batch-norm base class, compiler settings and compile error, and jsonargparse's (argparse's)
option tables, where no public API says what it needs. Each such name is in PRIVATE_APIS, and
tests/test_compat.py checks every one against the installed (pinned) versions, failing with the
name of the one that moved, and reads the package's code for private names that are not listed;
the accessors below are how the package reads them. Subclasses that override or call a private
method (SasaCLI, DeepSpeedStrategy, JoinedEpochIterator, GuardedDatasetWriter) and the FFCV
memory-manager patch (data/ffcv_loader.py) keep their code where it belongs, and their private
names are listed here."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class PrivateAPI:
    """`module`.`name` (dotted within the module): a class attribute or method, a module
    attribute, or with `instance=True` an attribute the class sets on its instances (or a field
    of a dataclass)."""

    module: str
    name: str
    instance: bool = False

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


def _instance(module: str, cls: str, *names: str) -> list[PrivateAPI]:
    return [PrivateAPI(module, f"{cls}.{name}", instance=True) for name in names]


PRIVATE_APIS: tuple[PrivateAPI, ...] = (
    # Lightning: where a resumed run is within its epoch (data/epoch_loader.py, preemption.py).
    *_instance("lightning.pytorch.loops.fit_loop", "_FitLoop", "epoch_loop"),
    *_instance("lightning.pytorch.loops.training_epoch_loop", "_TrainingEpochLoop", "batch_progress"),
    *_instance("lightning.pytorch.loops.progress", "_BatchProgress", "is_last_batch", "current"),
    *_instance("lightning.pytorch.loops.progress", "_ReadyCompletedTracker", "ready"),
    # Lightning: the cluster environment, to turn off its SLURM requeue (preemption.py).
    *_instance("lightning.pytorch.trainer.trainer", "Trainer", "_accelerator_connector"),
    *_instance("lightning.pytorch.trainer.connectors.accelerator_connector", "_AcceleratorConnector",
               "cluster_environment"),
    # Lightning: the model summary's table, drawn without its FLOPs line (cli/model_summary.py).
    PrivateAPI("lightning.pytorch.utilities.model_summary.model_summary", "_format_summary_table"),
    # Lightning: overridden by SasaCLI (cli/lightning_cli.py) and DeepSpeedStrategy (distributed/deepspeed.py).
    PrivateAPI("lightning.pytorch.cli", "LightningCLI._parse_ckpt_path"),
    PrivateAPI("lightning.pytorch.cli", "LightningCLI._instantiate_trainer"),
    PrivateAPI("lightning.pytorch.strategies", "DeepSpeedStrategy._format_config"),
    # Lightning: called by SasaCLI (the parsed config's values) and DeepSpeedStrategy (its process group on CPU).
    PrivateAPI("lightning.pytorch.cli", "LightningCLI._get"),
    PrivateAPI("lightning.pytorch.strategies", "DeepSpeedStrategy._init_deepspeed_distributed"),
    # jsonargparse and argparse: the options a parser knows, for an argument error's "did you
    # mean" (option_strings below, cli/argument_errors.py).
    *_instance("jsonargparse", "ArgumentParser", "_subcommands_action"),
    *_instance("argparse", "_SubParsersAction", "_name_parser_map"),
    *_instance("argparse", "_ActionsContainer", "_option_string_actions"),
    # FFCV: an epoch started at a given epoch and batch (start_ffcv_epoch below).
    PrivateAPI("ffcv.loader", "Loader.next_traversal_order"),
    PrivateAPI("ffcv.loader", "Loader.generate_code"),
    *_instance("ffcv.loader", "Loader", "next_epoch", "code", "recompile"),
    # FFCV: the epoch iterator's thread, stopped and joined (data/ffcv_epoch.py).
    *_instance("ffcv.loader.epoch_iterator", "EpochIterator", "terminate_event", "iter_ixes", "output_queue",
               "memory_context", "closed"),
    # FFCV: the OS cache manager's reader types, replaced (data/ffcv_loader.py).
    PrivateAPI("ffcv.memory_managers", "OSCacheManager.state_type"),
    PrivateAPI("ffcv.memory_managers", "OSCacheManager.compile_reader"),
    # FFCV: the writer's worker loop, rewritten to watch its workers (data/ffcv_guarded_writer.py).
    PrivateAPI("ffcv.writer", "DatasetWriter._write_common"),
    PrivateAPI("ffcv.writer", "DatasetWriter.prepare"),
    PrivateAPI("ffcv.writer", "DatasetWriter.finalize"),
    *_instance("ffcv.writer", "DatasetWriter", "metadata_sm", "metadata_type", "fields", "data_region_start",
               "page_size", "fname", "num_workers"),
    # torchvision: a v2 transform's input size and kernel dispatch (data/coco_module.py).
    PrivateAPI("torchvision.transforms.v2._utils", "query_size"),
    PrivateAPI("torchvision.transforms.v2", "Transform._call_kernel"),
    # torch: every batch norm's base class (tasks/classification.py), compiler settings (backends/compiled.py),
    # the error of a compile that failed (backends/flex.py).
    PrivateAPI("torch.nn.modules.batchnorm", "_BatchNorm"),
    PrivateAPI("torch._dynamo.exc", "BackendCompilerFailed"),
    PrivateAPI("torch._dynamo.config", "recompile_limit"),
    PrivateAPI("torch._dynamo.config", "fail_on_recompile_limit_hit"),
    PrivateAPI("torch.fx.experimental._config", "use_duck_shape"),
)


def option_strings(parser, subcommand: str | None) -> list[str]:
    """The option strings (--trainer.max_epochs, ...) a jsonargparse parser and its subcommand's parser know."""
    action = getattr(parser, "_subcommands_action", None)
    subparser = action._name_parser_map.get(subcommand) if action is not None and subcommand else None
    return [option for candidate in (subparser, parser) if candidate is not None
            for option in candidate._option_string_actions]


def summary_table_without_flops(total_parameters: int, trainable_parameters: int, model_size: float,
                                total_training_modes: dict, columns: list) -> str:
    """Lightning's model summary table for these columns, less its last line ("Total Flops")."""
    from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

    table = _format_summary_table(total_parameters, trainable_parameters, model_size, total_training_modes, 0, *columns)
    lines = table.splitlines()
    assert lines[-1].endswith("Total Flops"), lines[-1]  # the table's layout changed: adapt the line taken off
    return "\n".join(lines[:-1])


def batches_done(trainer) -> int:
    """Batches of the current training epoch already trained on (Lightning's loop progress)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready


def is_last_batch(trainer) -> bool:
    return trainer.fit_loop.epoch_loop.batch_progress.is_last_batch


def cluster_environment(trainer):
    return trainer._accelerator_connector.cluster_environment


def is_batch_norm(module) -> bool:
    """Any of torch's batch norms (1d, 2d, 3d, lazy and sync)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return isinstance(module, _BatchNorm)


def query_size(flat_inputs) -> tuple[int, int]:
    """(height, width) of a v2 transform's inputs."""
    from torchvision.transforms.v2._utils import query_size as torchvision_query_size

    return torchvision_query_size(flat_inputs)


@contextmanager
def compiler_settings(dynamo: dict, shapes: dict) -> Iterator[None]:
    """torch._dynamo.config and the symbolic-shape config (torch.fx.experimental._config) patched."""
    import torch
    from torch.fx.experimental import _config as shape_config

    with torch._dynamo.config.patch(**dynamo), shape_config.patch(**shapes):
        yield


def compile_failed() -> type[Exception]:
    """What torch.compile raises when its backend (inductor) fails to compile a graph."""
    import torch._dynamo.exc

    return torch._dynamo.exc.BackendCompilerFailed


def start_ffcv_epoch(loader, epoch: int, start: int):
    """FFCV `loader`'s sample order for `epoch` from batch `start` on, with its code generated:
    Loader.__iter__ (ffcv 1.0.2) but for the epoch given, where FFCV counts epochs itself (from 0
    in every process) and always starts at the first batch."""
    loader.next_epoch = epoch
    order = loader.next_traversal_order()[start * loader.batch_size : len(loader) * loader.batch_size]
    loader.next_epoch += 1
    if loader.code is None or loader.recompile:
        loader.generate_code()
    return order
