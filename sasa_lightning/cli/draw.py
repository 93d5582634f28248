"""Detections drawn on their image, for a person to look at."""

from __future__ import annotations

from pathlib import Path

import torch

MIN_SIDE = 384  # small images are enlarged (nearest neighbour) so that labels stay readable
COLOURS = ("#ffd700", "#00e5ff", "#ff4fd8", "#7cff4f", "#ff8c00", "#ffffff")


def draw_detections(image_path: str | Path, boxes: torch.Tensor, labels: list[str], categories: list[int],
                    out: str | Path) -> None:
    """A PNG of the image with each box (x1, y1, x2, y2, in the image's pixels) and its label
    ("name score"), coloured by its category id."""
    from PIL import Image, ImageDraw, ImageFont

    with Image.open(image_path) as opened:
        image = opened.convert("RGB")
    scale = max(1, -(-MIN_SIDE // min(image.size)))
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=max(10, 5 * scale))
    for (x1, y1, x2, y2), label, category in zip((boxes.reshape(-1, 4) * scale).tolist(), labels, categories):
        colour = COLOURS[category % len(COLOURS)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        left, top, right, bottom = draw.textbbox((x1, y1), label, font=font, anchor="lb")
        draw.rectangle([left, top, right + 2, bottom], fill=colour)
        draw.text((x1 + 1, y1), label, fill="black", font=font, anchor="lb")
    image.save(out, format="PNG")
