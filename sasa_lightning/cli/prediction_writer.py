"""What `sasa predict` writes."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from ..atomic import atomic_write
from ..data.coco_results import write_coco_results
from ..errors import ConfigError


class PredictionWriter(L.pytorch.callbacks.BasePredictionWriter):
    """`sasa predict` writes its outputs to <default_root_dir>; under DDP each process adds _rank<N>.

    Classifier: predictions.pt, each output key concatenated over batches ('classes' and
    'probabilities', the top-5 per image, in data order).
    Detector: detections.json in COCO's result format (data/coco_results.py), images.json (each
    image's id and file), and with draw, drawn/<image>.png showing the detections that score at
    least draw_threshold.
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
        path, detections, images = write_coco_results(records, root, suffix)
        print(f"wrote {path} ({detections} detections in {images} images)", flush=True)
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
