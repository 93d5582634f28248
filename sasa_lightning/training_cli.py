"""LightningCLI for `sasa fit|validate|test|predict`, with the project's defaults.

Every run writes under trainer.default_root_dir: checkpoints/ (last.ckpt and the best by
val/acc1, at a fixed path so `--ckpt_path last` finds them on resume) and logs/version_N/
(CSV always, TensorBoard when installed, the resolved config).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from .callbacks import LineProgress, PredictionWriter, Throughput
from .checkpoint_io import AtomicCheckpointIO
from .checkpoint_check import checkpoint_hparams, refuse_contradictions
from .distributed.preemption import Preemption
from .tasks.weights import CheckpointError


# Model options set from the data module when the classes are built (add_arguments_to_parser).
LINKED_FROM_DATA = ("num_classes",)
# The task options that choose the network, compared when validate/test/predict read a checkpoint.
ARCHITECTURE_OPTIONS = ("model", "model_options")
# --ckpt_path values Lightning resolves itself to this run's own checkpoints.
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")
DEFAULT_METRIC = "val/acc1"  # the best checkpoint's, unless the task names its own checkpoint_metric


def default_callbacks() -> list[L.Callback]:
    """Always present (LightningCLI's persistent callbacks); configs may add more.

    Two checkpoint callbacks: the best by the task's checkpoint_metric (set once the model is
    known), and last.ckpt rewritten after every epoch (ModelCheckpoint's own save_last only
    follows its top-k saves, so on a plateau it would leave last.ckpt behind). Preemption turns
    SIGUSR1 into last-preempted.ckpt (and a SLURM requeue). The prediction writer is configured
    under --predictions (see add_arguments_to_parser).
    """
    best = ModelCheckpoint(monitor=DEFAULT_METRIC, mode="max", auto_insert_metric_name=False)
    last = ModelCheckpoint(filename="last", save_top_k=1, enable_version_counter=False)
    return [best, last, LearningRateMonitor(), LineProgress(), Throughput(), Preemption()]


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


class SasaCLI(LightningCLI):
    def __init__(self, args: list[str]) -> None:
        # `sasa` always passes its arguments explicitly (main(argv) is also called in-process).
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run from within Python")
        interactive = sys.stderr.isatty()
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults={
                "default_root_dir": "runs/default",
                "enable_progress_bar": interactive,
                "callbacks": default_callbacks(),
            },
            save_config_kwargs={"overwrite": True},
            args=args,
        )

    def add_arguments_to_parser(self, parser) -> None:
        for option in LINKED_FROM_DATA:
            parser.link_arguments(f"data.{option}", f"model.init_args.{option}", apply_on="instantiate")
        # `sasa predict ... --predictions.draw true`
        parser.add_lightning_class_args(PredictionWriter, "predictions")

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
        super()._parse_ckpt_path()

    def instantiate_trainer(self, **kwargs):
        config = self._get(self.config_init, "trainer", default={})
        self.run_root = config.get("default_root_dir") or os.getcwd()
        if config.get("logger") in (None, True):
            kwargs["logger"] = default_loggers(self.run_root)
        trainer = super().instantiate_trainer(**kwargs)
        if SLURMEnvironment.detect():
            # Lightning checks this only when it launches processes itself (devices > 1); with
            # devices=1 under 2 tasks each task would train alone, into the same run folder.
            SLURMEnvironment().validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # DeepSpeed writes its own directories
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        metric = getattr(self.model, "checkpoint_metric", DEFAULT_METRIC)
        for callback in trainer.checkpoint_callbacks:
            if callback.dirpath is None:
                callback.dirpath = os.path.join(self.run_root, "checkpoints")
            if callback.monitor == DEFAULT_METRIC and callback.filename is None:
                follow_metric(callback, metric)
        return trainer

    def before_fit(self) -> None:
        self._fit_started = time.perf_counter()

    @rank_zero_only
    def after_fit(self) -> None:
        trainer = self.trainer
        seconds = time.perf_counter() - self._fit_started
        metrics = trainer.callback_metrics
        checkpoint = trainer.checkpoint_callback
        configs = " ".join(f"--config {c}" for c in (self.config.get("fit", {}).get("config") or []))
        lines = [f"training time {seconds:.0f} s ({trainer.current_epoch} epochs, {trainer.global_step} steps)"]
        for metric, what in (("val/acc1", "validation accuracy"), ("val/map", "validation mAP"), ("val/map_50", "mAP@0.5")):
            if metric not in metrics:
                continue
            best = checkpoint.best_model_score if checkpoint and checkpoint.monitor == metric else None
            lines.append(f"{what} {float(metrics[metric]):.4f}" + (f" (best {float(best):.4f})" if best is not None else ""))
        if checkpoint is not None:
            lines.append(f"checkpoints in {checkpoint.dirpath} (last.ckpt, best: {os.path.basename(checkpoint.best_model_path)})")
        if trainer.logger is not None:
            lines.append(f"logs in {trainer.logger.log_dir} (curves: sasa plot {trainer.logger.log_dir})")
        lines.append(f"resume with: sasa fit {configs} --ckpt_path last".replace("  ", " "))
        print("\n".join(lines), flush=True)
