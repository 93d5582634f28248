"""The parser of `sasa`'s tools (summary, data, plot, export, attention, bench); argument errors
are one line."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .bench import BENCHMARKS

EXPORT_FORMATS = ("checkpoint", "state_dict", "exported", "onnx")  # sasa export --format, cli/export.py


class _OneLineParser(argparse.ArgumentParser):
    """An argument error is one line (raised as ConfigError), not the usage followed by the error."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def tools_parser() -> argparse.ArgumentParser:
    from ..models.paper import PAPER_TABLES

    parser = _OneLineParser(
        prog="sasa",
        description="Stand-alone self-attention vision models. Training: sasa fit|validate|test|predict --config X.yaml",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    tables = commands.add_parser("summary", help="our parameter and FLOP counts beside the paper's tables")
    tables.add_argument("--table", type=int, action="append", choices=sorted(PAPER_TABLES), help="repeatable; default: all")
    tables.add_argument("--format", choices=("text", "json"), default="text")

    data = commands.add_parser("data", help="write datasets").add_subparsers(dest="data_command", required=True)
    writer = data.add_parser("write-ffcv", help="an ImageFolder tree to an FFCV .beton file")
    writer.add_argument("--src", required=True, help="ImageFolder root (one sub-folder of images per class)")
    writer.add_argument("--out", required=True, help="the .beton file to write")
    writer.add_argument("--max-resolution", type=int, default=256, help="longer image side stored (default 256)")
    writer.add_argument("--jpeg-quality", type=int, default=90)
    writer.add_argument("--num-workers", type=int, default=None)
    digits = data.add_parser("digits", help="write the built-in demo data (ImageFolder and .beton files)")
    digits.add_argument("--cache-dir", default=None, help="default: $SASA_CACHE or ~/.cache/sasa-lightning")
    shapes = data.add_parser("make-shapes", help="write the built-in detection data (COCO layout: JPEGs + JSON)")
    shapes.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    shapes.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    shapes.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    shapes.add_argument("--image-size", type=int, default=128)
    shapes.add_argument("--seed", type=int, default=0)

    plot = commands.add_parser("plot", help="loss and accuracy (or mAP) curves of a run as a PNG")
    plot.add_argument("log_dir", help="a run's log folder holding metrics.csv, e.g. runs/digits/logs/version_0")
    plot.add_argument("--out", default=None, help="default: <log_dir>/curves.png")

    export = commands.add_parser(
        "export", help="a checkpoint as one fp32 Lightning checkpoint, its inference weights, a torch.export program "
                       "or an ONNX model")
    export.add_argument("checkpoint", help="a checkpoint file, or the directory a DeepSpeed run wrote "
                                           "(e.g. runs/x/checkpoints/last.ckpt)")
    export.add_argument("out", help="the file to write")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="checkpoint",
                        help="checkpoint: a DeepSpeed directory to one Lightning checkpoint (default); state_dict: the "
                             "inference weights (EMA when present); exported: a classifier as a torch.export program; "
                             "onnx: a classifier as an ONNX model")
    export.add_argument("--image-size", type=int, default=224,
                        help="exported and onnx: the input's height and width (the batch size stays free; default 224)")

    attention = commands.add_parser(
        "attention", help="a PNG of where the attention layers look, for a pixel of an image: each head's window "
                          "weights over the image, and the attention stem's value mixtures")
    attention.add_argument("--ckpt", required=True, help="a classifier's or detector's checkpoint (file or DeepSpeed "
                                                         "directory)")
    attention.add_argument("--image", required=True, help="the image (any format Pillow reads)")
    attention.add_argument("--out", required=True, help="the PNG to write")
    attention.add_argument("--pixel", type=_pixel, default=None,
                           help="ROW,COL in the image as the network sees it (sides rounded to multiples of 32); "
                                "default: the centre, and for a classifier the peak of its predicted class's map")
    attention.add_argument("--layers", type=lambda text: [name for name in text.split(",") if name], default=None,
                           help="attention layers by module name, comma-separated (default: the first of each stage)")
    attention.add_argument("--mean", type=float, nargs=3, default=None,
                           help="a classifier's input normalisation (default: ImageNet's; a detector's is its own)")
    attention.add_argument("--std", type=float, nargs=3, default=None)

    bench = commands.add_parser("bench", help="benchmarks (see benchmarks/)")
    bench.add_argument("name", choices=BENCHMARKS)
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    return parser


def _pixel(text: str) -> tuple[int, int]:
    try:
        row, col = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL (two integers), got {text!r}") from None
    return row, col
