"""`sasa plot`: loss and accuracy (or detection mAP) curves from a run's CSV log, as a PNG."""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import atomic_write
from ..data.errors import DataError
from .run_history import history_rows


def read_metrics(log_dir: str | os.PathLike) -> dict[str, list[tuple[float, float]]]:
    """{metric: [(step, value), ...]} from <log_dir>/metrics.csv (Lightning's CSVLogger), and from
    the parts of the run before it when it is a resumed run's (run_history.py)."""
    path = Path(log_dir) / "metrics.csv"
    if not path.is_file():
        raise DataError(f"no metrics.csv in {str(log_dir)!r}; give a run's log folder, e.g. runs/digits/logs/version_0")
    series: dict[str, list[tuple[float, float]]] = {}
    for row in history_rows(log_dir):
        for key, value in row.items():
            if key not in ("step", "epoch") and value not in ("", None):
                series.setdefault(key, []).append((float(row["step"]), float(value)))
    if not series:
        raise DataError(f"{str(path)!r} has no rows of metrics yet: nothing to plot (the run logs every "
                        f"trainer.log_every_n_steps steps and at the end of each epoch)")
    return series


def task_curves(series: dict) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The plot panels (ReportedMetrics.curves) of the task whose metrics the log holds: the one
    whose best-checkpoint metric is there, else the one with most of its plotted metrics."""
    from ..tasks import TASKS

    task = max(TASKS, key=lambda task: (task.reported.best in series, len(task.reported.plotted() & set(series))))
    return task.reported.curves


def plot_run(log_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(log_dir)
    out = Path(out) if out else Path(log_dir) / "curves.png"
    curves = task_curves(series)
    figure, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4), squeeze=False)
    for axis, (title, names) in zip(axes[0], curves):
        for name in names:
            if name in series:
                steps, values = zip(*series[name])
                axis.plot(steps, values, label=name, marker="." if len(steps) < 50 else None)
        axis.set_xlabel("step")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    atomic_write(out, lambda partial: figure.savefig(partial, dpi=100))
    plt.close(figure)
    return out
