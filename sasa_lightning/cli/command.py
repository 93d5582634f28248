"""The `sasa` command.

Trainer subcommands (fit, validate, test, predict) are LightningCLI: `sasa fit --config X.yaml`.
Tools: `sasa summary` (the paper's tables), `sasa data ...` (writers, demo data), `sasa plot`
(curves of a run), `sasa export` (a checkpoint as one file, its weights, a torch.export program
or ONNX), `sasa attention` (attention maps) and `sasa bench ...` (benchmarks of the source
checkout).
"""

from __future__ import annotations

import argparse
import contextvars
import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from ..errors import ConfigError, UserError
from .argument_errors import TRAINER_COMMANDS

EXPORT_FORMATS = ("checkpoint", "state_dict", "exported", "onnx")  # sasa export --format, cli/export.py


def summary(tables: list[int], output_format: str) -> list[dict]:
    from ..models import complexity, create_model
    from ..models.paper import PAPER_TABLES

    results = []
    for table in tables:
        for row in PAPER_TABLES[table]:
            measured = complexity(create_model(row.model, **row.overrides), (3, row.image_size, row.image_size))
            results.append({**asdict(row), "params_m": round(measured.params_m, 3), "gflops": round(measured.gflops, 3)})
            if output_format == "text":
                _print_row(results[-1], first=len(results) == 1 or results[-2]["table"] != table)
    if output_format == "json":
        print(json.dumps(results, indent=2))
    return results


def _relative(ours: float, paper: float | None) -> str:
    return "" if paper is None else f"{100 * (ours / paper - 1):+.1f}%"


def _print_row(result: dict, first: bool) -> None:
    if first:
        print(f"\nTable {result['table']}")
        print(f"{'row':46} {'model':23} {'params M':>8} {'paper':>6} {'diff':>6}   {'GFLOPs':>6} {'paper':>6} {'diff':>6}")
    paper_params = result["paper_params_m"]
    print(
        f"{result['row']:46} {result['model']:23} {result['params_m']:8.2f} "
        f"{'-' if paper_params is None else paper_params:>6} {_relative(result['params_m'], paper_params):>6}   "
        f"{result['gflops']:6.2f} {result['paper_gflops']:>6} {_relative(result['gflops'], result['paper_gflops']):>6}",
        flush=True,
    )


def run_benchmark(name: str, args: list[str]) -> int:
    """Run benchmarks/<name>.py of the source checkout (benchmarks are not part of the wheel);
    a dash in the name is an underscore in the file's."""
    script = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name.replace('-', '_')}.py"
    if not script.is_file():
        print(f"sasa bench: {script} not found; benchmarks run from a source checkout of sasa-lightning", file=sys.stderr)
        return 2
    return subprocess.run([sys.executable, str(script), *args]).returncode


class _OneLineParser(argparse.ArgumentParser):
    """An argument error is one line (raised as ConfigError), not the usage followed by the error."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


def _tools_parser() -> argparse.ArgumentParser:
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
    bench.add_argument("name", choices=("layer", "model", "memory", "data", "scaling", "clean_exit", "triton-compile",
                                        "performance-model", "triton-tiles", "profile-cuda"))
    bench.add_argument("args", nargs=argparse.REMAINDER, help="passed to the benchmark")
    return parser


def _pixel(text: str) -> tuple[int, int]:
    try:
        row, col = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROW,COL (two integers), got {text!r}") from None
    return row, col


def _terminate_as_interrupt(signum, frame) -> None:
    # SIGTERM (kill, a scheduler's cancel) unwinds like Ctrl-C, so that the tools' cleanup runs:
    # the writers' partial files and worker processes, FFCV's shared memory.
    raise KeyboardInterrupt


def _run_tool(argv: list[str]) -> int:
    args = _tools_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    try:
        return _tool(args)
    finally:
        signal.signal(signal.SIGTERM, previous)  # main() is also called in-process


def _tool(args: argparse.Namespace) -> int:
    if args.command == "summary":
        from ..models.paper import PAPER_TABLES

        summary(args.table or sorted(PAPER_TABLES), args.format)
    elif args.command == "data" and args.data_command == "write-ffcv":
        from ..data import write_ffcv

        out = write_ffcv(args.src, args.out, args.max_resolution, args.jpeg_quality, args.num_workers)
        print(f"wrote {out}")
    elif args.command == "data" and args.data_command == "make-shapes":
        from ..data import make_shapes

        print(f"wrote {make_shapes(args.out, args.train, args.val, args.image_size, args.seed)}")
    elif args.command == "data":
        from ..data import prepare_digits

        for name, path in prepare_digits(args.cache_dir).items():
            print(f"{name}: {path}")
    elif args.command == "plot":
        from .plot import plot_run

        print(f"wrote {plot_run(args.log_dir, args.out)}")
    elif args.command == "export":
        from .export import export

        print(f"wrote {export(args.checkpoint, args.out, args.format, args.image_size)}")
    elif args.command == "attention":
        from .attention_maps import attention_maps

        out, windows = attention_maps(args.ckpt, args.image, args.out, args.pixel, args.layers, args.mean, args.std)
        print(f"wrote {out} ({len(windows)} windows)")
    elif args.command == "bench":
        return run_benchmark(args.name, args.args)
    return 0


def _run_trainer(argv: list[str]) -> int:
    from ..distributed.preemption import Preempted
    from ..distributed.process_group import end_process_groups
    from .lightning_cli import SasaCLI

    try:
        # In a context of its own: jsonargparse sets a context variable to its parser and never
        # resets it, which would keep the parser, and through it the trainer, the model and the
        # process groups, alive until exit (end_process_groups needs them gone).
        contextvars.copy_context().run(SasaCLI, args=argv)
    except Preempted as stop:
        # Not a failure: the state is saved and (under SLURM) the job is already queued again,
        # which rank 0 has reported before the requeue could end it.
        if not stop.requeued:
            print(f"sasa: {stop}", file=sys.stderr, flush=True)
    end_process_groups()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    run = _run_trainer if argv and argv[0] in TRAINER_COMMANDS else _run_tool
    if os.environ.get("SASA_DEBUG"):
        return run(argv)
    try:
        return run(argv)
    except KeyboardInterrupt:
        print("sasa: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = user_error_message(error)
        if message is None:
            raise  # a bug: its traceback is what is needed to fix it
        # What the user gave is wrong: one line, no traceback (SASA_DEBUG=1 shows it).
        print(f"sasa: error: {message}", file=sys.stderr)
        return 2


def _is_user_error(error: BaseException) -> bool:
    """What the person running sasa can fix: our own UserError (data, checkpoints, config values,
    backends), and a file system's refusal of a named path (a full disk, a read-only folder, a
    parent that is a file)."""
    return isinstance(error, UserError) or (isinstance(error, OSError) and error.filename is not None)


def user_error_message(error: BaseException) -> str | None:
    """The message of the innermost user error in the chain, on one line; None when there is none.

    jsonargparse wraps an error raised while building a class (an unknown model name, say) in
    its own multi-line report; the original, which says what is wrong, is further down the chain.
    A failed Union is the exception: its report names every alternative's error, and the chain
    only continues with the last alternative tried.
    """
    root, link = None, error
    while link is not None:
        if str(link).startswith(UNION_REPORT):
            return _union_reason(str(link))
        if _is_user_error(link):
            root = link
        # Follow the chain as Python's traceback does: `raise ... from None` ends it.
        link = link.__cause__ if link.__cause__ is not None else None if link.__suppress_context__ else link.__context__
    if root is None:
        return None
    text = str(root) if not isinstance(root, OSError) or root.strerror is None else f"{root.strerror}: {str(root.filename)!r}"
    if "Original Traceback" in text:
        # Re-raised from a DataLoader worker: the message holds the worker's traceback, and its
        # last line is the original error.
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


UNION_REPORT = "Does not validate against any of the Union subtypes"


def _union_reason(message: str) -> str:
    """The error of the alternative that was meant, from jsonargparse's report on a failed Union.

    A value that can be a name or a class (`trainer.strategy`) that fails to build is reported as
    "Errors: - Expected a <class 'str'> - <the real error>"; the type mismatches are noise.
    """
    errors = [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")]
    meant = [error for error in errors if not error.startswith("Expected a ")] or errors
    return "; ".join(meant) if meant else " ".join(message.split())
