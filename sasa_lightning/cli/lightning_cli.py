"""LightningCLI for `sasa fit|validate|test|predict`, with the project's defaults.

Every run writes under trainer.default_root_dir: checkpoints/ (last.ckpt and the best by the
task's reported.best metric, at a fixed path so `--ckpt_path last` finds them on resume) and
logs/version_N/ (CSV always, TensorBoard when installed, the resolved config).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.fabric.utilities.exceptions import MisconfigurationException

from ..atomic import refuse_file_on_path
from ..distributed.preemption import Preemption
from ..checkpoint import checkpoint_hparams
from ..errors import CheckpointError, ConfigError
from .argument_errors import TRAINER_COMMANDS, explain_argument_error
from .checkpoint_check import RUN_OPTIONS, refuse_contradictions
from .checkpoint_io import AtomicCheckpointIO
from .model_summary import ModelSummary
from .prediction_writer import PredictionWriter
from .progress import LineProgress
from .run_history import mark_continuation, run_history
from .throughput import Throughput
from .trainer import Trainer


# Model options set from the data module when the classes are built (add_arguments_to_parser).
LINKED_FROM_DATA = ("num_classes",)
# The task options that choose the network, compared when validate/test/predict read a checkpoint.
ARCHITECTURE_OPTIONS = ("model", "model_options")
# --ckpt_path values Lightning resolves itself to this run's own checkpoints.
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


# The callbacks every run has, each a config section of its own (`--last_checkpoint.every_n_train_steps
# 500`, shown by --print_config), with the project's defaults. `best_checkpoint` keeps the best by
# the task's reported.best metric while its monitor is left null; `last_checkpoint` rewrites last.ckpt
# after every epoch (ModelCheckpoint's own save_last only follows its top-k saves, so on a plateau
# it would leave last.ckpt behind); `preemption` turns SIGUSR1 into last-preempted.ckpt (and a
# SLURM requeue); `predictions` writes what `sasa predict` predicts (`--predictions.draw true`);
# `model_summary` is Lightning's table without the FLOPs it cannot count (cli/model_summary.py).
DEFAULT_CALLBACKS = {
    "best_checkpoint": (ModelCheckpoint, {"mode": "max", "auto_insert_metric_name": False}),
    "last_checkpoint": (ModelCheckpoint, {"filename": "last", "save_top_k": 1, "enable_version_counter": False}),
    "lr_monitor": (LearningRateMonitor, {}),
    "progress": (LineProgress, {}),
    "throughput": (Throughput, {}),
    "preemption": (Preemption, {}),
    "predictions": (PredictionWriter, {}),
    "model_summary": (ModelSummary, {}),
}


def follow_metric(best: ModelCheckpoint, metric: str) -> None:
    """Point the best-checkpoint callback at `metric` (higher is better), named in its file names."""
    best.monitor = metric
    best.filename = f"best-epoch{{epoch:03d}}-{metric.split('/')[-1]}_{{{metric}:.4f}}"


def default_loggers(root: str) -> list:
    csv = CSVLogger(root, name="logs")
    loggers = [csv]
    try:
        import tensorboard  # noqa: F401  (optional)

        loggers.append(TensorBoardLogger(root, name="logs", version=csv.version, default_hp_metric=False))
    except ImportError:
        pass
    return loggers


PARSER_OPTIONS = {"exit_on_error": False, "allow_abbrev": False}


def _quiet_library_noise() -> None:
    """Lines libraries print at every start that say nothing about the run."""
    # `sasa` always passes its arguments explicitly (main(argv) is also called in-process).
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
    # torch deprecates an API Lightning 2.6's _pytree still calls; nothing a user can change.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _NoiseFilter) for f in rank_zero.filters):
        rank_zero.addFilter(_NoiseFilter())


class _NoiseFilter(logging.Filter):
    # Lightning's advert for its cloud logger, and its note that the Trainer has a model summary
    # already (the `model_summary` section every run has, cli/model_summary.py).
    NOISE = ("💡 Tip", "Trainer already configured with model summary callbacks")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.NOISE)


class SasaCLI(LightningCLI):
    def __init__(self, args: list[str]) -> None:
        _quiet_library_noise()
        interactive = sys.stderr.isatty()
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            trainer_class=Trainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults={
                "default_root_dir": "runs/default",
                "enable_progress_bar": interactive,
            },
            save_config_kwargs={"overwrite": True},
            # An argument error raises (one line, below) instead of printing the whole usage.
            # No abbreviations: argparse would take --trainer.max_epoch for --trainer.max_epochs.
            parser_kwargs={**PARSER_OPTIONS, **{command: PARSER_OPTIONS for command in TRAINER_COMMANDS}},
            # The tasks' configure_optimizers build the paper's parameter groups and schedule;
            # --optimizer and --lr_scheduler would silently replace both, so they are not offered.
            auto_configure_optimizers=False,
            args=args,
        )

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except ArgumentError as error:
            raise ConfigError(explain_argument_error(parser, args, error)) from None

    def add_arguments_to_parser(self, parser) -> None:
        for option in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{option}", f"model.init_args.{option}", apply_on="instantiate")
        for section, (callback, defaults) in DEFAULT_CALLBACKS.items():
            parser.add_lightning_class_args(callback, section)
            parser.set_defaults({f"{section}.{option}": value for option, value in defaults.items()})

    def _parse_ckpt_path(self) -> None:
        """Check a --ckpt_path file or DeepSpeed directory before Lightning reads it.

        Lightning would replace the command line's model options by the checkpoint's without a
        word (a resume of a sasa_resnet26 run given --model.init_args.model sasa_resnet38 trains
        a sasa_resnet26), and reports a truncated or foreign file with a traceback.
        """
        subcommand = self.config.get("subcommand")
        path = subcommand and self.config[subcommand].get("ckpt_path")
        if path and path not in LIGHTNING_CKPT_NAMES:
            if Path(path).is_dir() and "DeepSpeed" not in str(self.config[subcommand].get("trainer", {}).get("strategy")):
                raise CheckpointError(
                    f"checkpoint {path!r} is a directory (a DeepSpeed checkpoint?); give it with a DeepSpeed strategy "
                    f"config, or consolidate it into one file first: sasa export {path} model.ckpt"
                )
            # A resume must agree on everything; evaluation only on the network it builds, as the
            # training options (learning rate, schedule) do not change what it computes.
            compared = None if subcommand == "fit" else ARCHITECTURE_OPTIONS
            refuse_contradictions(self.config[subcommand].get("model"), checkpoint_hparams(path), path,
                                  linked=LINKED_FROM_DATA, compared=compared)
        model = subcommand and self.config[subcommand].get("model")
        init_args = (model or {}).get("init_args") or {}
        run_options = {key: init_args[key] for key in RUN_OPTIONS if key in init_args}
        super()._parse_ckpt_path()
        # Lightning has put the checkpoint's options over the command line's; how to run is ours.
        for key, value in run_options.items():
            self.config[subcommand]["model"]["init_args"][key] = value

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        self.run_root = config.get("default_root_dir") or os.getcwd()
        # Said now, not after the data set is written (minutes, on a first run) and training starts.
        refuse_file_on_path(os.path.join(self.run_root, "checkpoints"))
        if config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(self.run_root)
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as error:
            # What Lightning's Trainer raises for options it cannot honour (an accelerator that is
            # not there, an unknown strategy name): the classes themselves are built by then.
            raise ConfigError(f"the trainer options cannot be used here: {' '.join(str(error).split())}") from None
        if SLURMEnvironment.detect():
            # Lightning checks this only when it launches processes itself (devices > 1); with
            # devices=1 under 2 tasks each task would train alone, into the same run folder.
            try:
                SLURMEnvironment().validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
            except ValueError as error:  # the job's tasks and the trainer's devices disagree
                raise ConfigError(" ".join(str(error).split())) from None
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # DeepSpeed writes its own directories
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        best = self._get(self.config_init, "best_checkpoint")
        reported = getattr(self.model, "reported", None)  # a task's ReportedMetrics
        if best in trainer.checkpoint_callbacks and best.monitor is None and reported is not None:
            follow_metric(best, reported.best)
        for callback in trainer.checkpoint_callbacks:
            if callback.dirpath is None:
                callback.dirpath = os.path.join(self.run_root, "checkpoints")
        return trainer

    def _instantiate_trainer(self, config: dict, callbacks: list) -> L.Trainer:
        # Lightning refuses checkpoint callbacks with checkpointing off, and a learning-rate
        # monitor without a logger, and would draw a summary it was told not to; the default
        # sections give way to those choices.
        unwanted = tuple(kind for kind, off in ((ModelCheckpoint, config.get("enable_checkpointing") is False),
                                                (LearningRateMonitor, config.get("logger") is False),
                                                (ModelSummary, config.get("enable_model_summary") is False)) if off)
        return super()._instantiate_trainer(config, [c for c in callbacks if not isinstance(c, unwanted)])

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()
        logger = self.trainer.logger
        if self.config["fit"].get("ckpt_path") and logger is not None and logger.log_dir and self.trainer.is_global_zero:
            mark_continuation(logger.log_dir)

    @rank_zero_only
    def after_fit(self) -> None:
        trainer = self.trainer
        seconds = time.perf_counter() - self._fit_started
        metrics = trainer.callback_metrics
        checkpoint = trainer.checkpoint_callback
        configs = " ".join(f"--config {c}" for c in (self.config.get("fit", {}).get("config") or []))
        lines = [f"training time {seconds:.0f} s ({trainer.current_epoch} epochs, {trainer.global_step} steps)"]
        reported = getattr(self.model, "reported", None)
        for metric, what in reported.final if reported is not None else ():
            if metric not in metrics:
                continue
            best = checkpoint.best_model_score if checkpoint and checkpoint.monitor == metric else None
            lines.append(f"{what} {float(metrics[metric]):.4f}" + (f" (best {float(best):.4f})" if best is not None else ""))
        if checkpoint is not None:
            lines.append(f"checkpoints in {checkpoint.dirpath} (last.ckpt, best: {os.path.basename(checkpoint.best_model_path)})")
        if trainer.logger is not None and trainer.logger.log_dir is not None:  # fast_dev_run logs nowhere
            pieces = len(run_history(trainer.logger.log_dir))
            whole = f" of all {pieces} parts of the run" if pieces > 1 else ""
            lines.append(f"logs in {trainer.logger.log_dir} (curves{whole}: sasa plot {trainer.logger.log_dir})")
        lines.append(f"resume with: sasa fit {configs} --ckpt_path last".replace("  ", " "))
        print("\n".join(lines), flush=True)
