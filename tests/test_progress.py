"""The progress lines a log file gets: the task's own metrics, an epoch count only when fitting."""

import io
from types import SimpleNamespace

import torch

from sasa_lightning.cli.progress import LineProgress
from sasa_lightning.tasks import ImageClassifier, ObjectDetector


def run_lines(task, fn: str) -> list[str]:
    metrics = {"train/loss_step": torch.tensor(0.5), "train/acc1_step": torch.tensor(0.75), "train/images_per_s": 40.0,
               "val/loss": torch.tensor(0.25), "val/acc1": torch.tensor(0.9), "val/acc5": torch.tensor(1.0),
               "val/map": torch.tensor(0.3), "val/map_50": torch.tensor(0.55), "val/other": torch.tensor(7.0)}
    trainer = SimpleNamespace(current_epoch=1, max_epochs=15, num_training_batches=22, global_step=30,
                              callback_metrics=metrics, sanity_checking=False, state=SimpleNamespace(fn=fn))
    progress = LineProgress(every_seconds=0)
    progress.stream, progress.enabled = io.StringIO(), True
    module = SimpleNamespace(reported=task.reported)
    progress.on_train_batch_end(trainer, module, None, None, 7)
    progress.on_validation_end(trainer, module)
    return progress.stream.getvalue().splitlines()


def test_a_classifier_s_lines_show_its_accuracy():
    train, validation = run_lines(ImageClassifier, "fit")
    assert train == "epoch 2/15 batch 8/22 step 30  train/loss_step 0.5  train/acc1_step 0.75  train/images_per_s 40"
    assert validation == "epoch 2/15 validated  val/loss 0.25  val/acc1 0.9  val/acc5 1"


def test_a_detector_s_lines_show_its_map_and_validate_counts_no_epochs():
    train, validation = run_lines(ObjectDetector, "validate")
    assert train.endswith("step 30  train/loss_step 0.5  train/images_per_s 40")
    assert validation == "validated  val/map 0.3  val/map_50 0.55"
