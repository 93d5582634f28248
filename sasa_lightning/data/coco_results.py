"""Detections in COCO's result format, the file COCO's evaluation tools score."""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write


def coco_results(records: list[dict]) -> list[dict]:
    """One {image_id, category_id, score, bbox: [x, y, width, height]} per detection, from the
    detector's records (boxes as x1, y1, x2, y2 in the image's pixels)."""
    return [
        {"image_id": record["image_id"], "category_id": category, "score": round(float(score), 5),
         "bbox": [round(float(v), 2) for v in (x1, y1, x2 - x1, y2 - y1)]}
        for record in records
        for (x1, y1, x2, y2), score, category in zip(record["boxes"].tolist(), record["scores"], record["category_ids"])
    ]


def write_coco_results(records: list[dict], root: Path, suffix: str = "") -> tuple[Path, int, int]:
    """root/detections<suffix>.json (coco_results) and root/images<suffix>.json (each image's id
    and file), each written atomically; returns (the detections' path, detections, images)."""
    results = coco_results(records)
    images = [{"id": record["image_id"], "file_name": record["file_name"]} for record in records]
    for name, content in ((f"detections{suffix}.json", results), (f"images{suffix}.json", images)):
        atomic_write(root / name, lambda path: path.write_text(json.dumps(content)))
    return root / f"detections{suffix}.json", len(results), len(images)
