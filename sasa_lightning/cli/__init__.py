"""The `sasa` command and what it runs.

command.py: the entry point, which runs a trainer subcommand or a tool and ends a user's error as
one line (user_errors.py); tools_parser.py: the tools' arguments (summary, data, plot, export,
attention, bench); paper_tables.py: `sasa summary`; bench.py: `sasa bench`. lightning_cli.py:
`sasa fit|validate|test|predict`, a LightningCLI with its Trainer (trainer.py), the callbacks every
run has (progress.py, throughput.py, prediction_writer.py, model_summary.py, checkpoints) and the
checks of a --ckpt_path (checkpoint_check.py). export.py, attention_maps.py, plot.py and draw.py hold what
the tools of those names do."""

from .command import main
from .user_errors import user_error_message

__all__ = ["main", "user_error_message"]
