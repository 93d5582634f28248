"""The `sasa` command: which subcommand runs, and how its errors end.

Trainer subcommands (fit, validate, test, predict) are LightningCLI: `sasa fit --config X.yaml`
(lightning_cli.py). Tools (tools_parser.py): `sasa summary` (the paper's tables, paper_tables.py),
`sasa data ...` (writers, demo data), `sasa plot` (curves of a run), `sasa export` (a checkpoint
as one file, its weights, a torch.export program or ONNX), `sasa attention` (attention maps) and
`sasa bench ...` (benchmarks of the source checkout, bench.py). An error the user can fix ends
as one line (user_errors.py); a bug keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextvars
import os
import signal
import sys

from .argument_errors import TRAINER_COMMANDS
from .bench import run_benchmark
from .paper_tables import summary
from .tools_parser import tools_parser
from .user_errors import user_error_message


def _terminate_as_interrupt(signum, frame) -> None:
    # SIGTERM (kill, a scheduler's cancel) unwinds like Ctrl-C, so that the tools' cleanup runs:
    # the writers' partial files and worker processes, FFCV's shared memory.
    raise KeyboardInterrupt


def _run_tool(argv: list[str]) -> int:
    args = tools_parser().parse_args(argv)
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
