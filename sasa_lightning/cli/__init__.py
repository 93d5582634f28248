"""The `sasa` command and what it runs.

command.py: the entry point, its tools (summary, data, plot, export, attention, bench) and the
one-line user errors. lightning_cli.py: `sasa fit|validate|test|predict`, a LightningCLI with
the callbacks every run has (progress.py, throughput.py, prediction_writer.py, checkpoints) and
the checks of a --ckpt_path (checkpoint_check.py). export.py, attention_maps.py, plot.py and
draw.py hold what the tools of those names do.
"""

from .command import main, user_error_message

__all__ = ["main", "user_error_message"]
