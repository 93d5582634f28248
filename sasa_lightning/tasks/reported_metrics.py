"""The metrics of a task that the `sasa` command reports, declared by the task itself, so that
the command, its progress lines and `sasa plot` name none of their own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportedMetrics:
    """best: what the "best" checkpoint follows (higher is better).
    training: the progress line's values during training (per step).
    validation: the line after each validation.
    final: what the summary after `sasa fit` states, with the words for each.
    curves: `sasa plot`'s panels, (title, metrics) each, from the run's CSV log.
    """

    best: str
    training: tuple[str, ...]
    validation: tuple[str, ...]
    final: tuple[tuple[str, str], ...]
    curves: tuple[tuple[str, tuple[str, ...]], ...]

    def plotted(self) -> set[str]:
        return {name for _, names in self.curves for name in names}
