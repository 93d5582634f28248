"""Callbacks the `sasa` command adds to every run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from .atomic import atomic_write
from .errors import ConfigError


def _format(metrics: dict, keys) -> str:
    return "  ".join(f"{k} {float(metrics[k]):.4g}" for k in keys if k in metrics)


class LineProgress(L.Callback):
    """Single-line progress for logs that are not a terminal (SLURM output files).

    A progress bar redraws with carriage returns, which fill a log file with noise; in a
    terminal the usual bar is shown and this callback stays silent.
    """

    def __init__(self, every_seconds: float = 30.0) -> None:
        self.every_seconds = every_seconds
        self.stream = sys.stderr
        self.enabled = not self.stream.isatty()
        self._last = 0.0

    @rank_zero_only
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self._last < self.every_seconds:
            return
        self._last = now
        metrics = trainer.callback_metrics
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} batch {batch_idx + 1}/{trainer.num_training_batches} "
            f"step {trainer.global_step}  {_format(metrics, ('train/loss_step', 'train/acc1_step', 'train/images_per_s'))}",
            file=self.stream,
            flush=True,
        )

    @rank_zero_only
    def on_validation_end(self, trainer, pl_module) -> None:
        # After the tasks' own epoch-end hooks: the detector computes its mAP there.
        if not self.enabled or trainer.sanity_checking:
            return
        print(
            f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs} validated  "
            f"{_format(trainer.callback_metrics, ('val/loss', 'val/acc1', 'val/acc5', 'val/map', 'val/map_50'))}",
            file=self.stream,
            flush=True,
        )


class Throughput(L.Callback):
    """Logs train/images_per_s over whole steps, data loading included: from one batch start to the next."""

    def __init__(self) -> None:
        self._last_batch_start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_start is not None and batch_idx > 0:
            images = len(batch[0]) * trainer.world_size  # a tensor's first dimension, or a detector's list of images
            pl_module.log("train/images_per_s", images / (now - self._last_batch_start), on_step=True, on_epoch=False)
        self._last_batch_start = now


class PredictionWriter(L.pytorch.callbacks.BasePredictionWriter):
    """`sasa predict` writes its outputs to <default_root_dir>; under DDP each process adds _rank<N>.

    Classifier: predictions.pt, each output key concatenated over batches ('classes' and
    'probabilities', the top-5 per image, in data order).
    Detector: detections.json in COCO's result format (image_id, category_id, bbox as
    [x, y, width, height], score), images.json (each image's id and file), and with draw,
    drawn/<image>.png showing the detections that score at least draw_threshold.
    Every file is written under a temporary name and renamed, so it is either complete or absent.
    """

    def __init__(self, draw: bool = False, draw_threshold: float = 0.3) -> None:
        super().__init__(write_interval="epoch")
        if not 0 <= draw_threshold <= 1:
            raise ConfigError(f"draw_threshold is a score between 0 and 1, got {draw_threshold}")
        self.draw, self.draw_threshold = draw, draw_threshold

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        # With several predict dataloaders, their outputs are concatenated in order.
        batches = [b for loader in predictions for b in loader] if trainer.predict_loop.num_dataloaders > 1 else predictions
        suffix = "" if trainer.world_size == 1 else f"_rank{trainer.global_rank}"
        root = Path(trainer.default_root_dir)
        root.mkdir(parents=True, exist_ok=True)
        if batches and isinstance(batches[0], dict):
            self._write_tensors(batches, root / f"predictions{suffix}.pt")
        elif batches and isinstance(batches[0], list):
            self._write_detections([record for batch in batches for record in batch], root, suffix)

    @staticmethod
    def _write_tensors(batches: list[dict], out: Path) -> None:
        import torch

        merged = {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}
        atomic_write(out, lambda path: torch.save(merged, path))
        print(f"wrote {out} ({', '.join(f'{k} {tuple(v.shape)}' for k, v in merged.items())})", flush=True)

    def _write_detections(self, records: list[dict], root: Path, suffix: str) -> None:
        results = [
            {"image_id": record["image_id"], "category_id": category, "score": round(float(score), 5),
             "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)]}
            for record in records
            for (x1, y1, x2, y2), score, category in zip(record["boxes"].tolist(), record["scores"], record["category_ids"])
        ]
        images = [{"id": record["image_id"], "file_name": record["file_name"]} for record in records]
        for name, content in ((f"detections{suffix}.json", results), (f"images{suffix}.json", images)):
            atomic_write(root / name, lambda path: path.write_text(json.dumps(content)))
        print(f"wrote {root / f'detections{suffix}.json'} ({len(results)} detections in {len(images)} images)", flush=True)
        if self.draw:
            from .draw import draw_detections

            folder = root / "drawn"
            folder.mkdir(exist_ok=True)
            for record in records:
                kept = [i for i, score in enumerate(record["scores"].tolist()) if score >= self.draw_threshold]
                labels = [f"{record['category_names'][i]} {float(record['scores'][i]):.2f}" for i in kept]
                categories = [record["category_ids"][i] for i in kept]
                out = folder / f"{Path(record['file_name']).stem}.png"
                atomic_write(out, lambda path: draw_detections(record["path"], record["boxes"][kept], labels, categories, path))
            print(f"drew {len(records)} images in {folder} (detections scoring at least {self.draw_threshold})", flush=True)
