"""Whether a --ckpt_path is of the run the command line describes (its hyper-parameters: checkpoint.py)."""

from __future__ import annotations

from typing import Any

from ..errors import CheckpointError

# Keys Lightning's CLI adds to hyper-parameters, not options of the task.
CLI_KEYS = ("_class_path", "_instantiator")
# Task options that say how the model runs, not what it computes: the command line decides them,
# also when it resumes or evaluates a checkpoint saved with others.
RUN_OPTIONS = ("compile", "channels_last")


def _plain(value: Any) -> Any:
    """Config values as the checkpoint stores them: jsonargparse Namespaces as dicts, tuples as lists."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _task_name(class_path: str | None) -> str:
    name = (class_path or "?").rsplit(".", 1)[-1]
    kind = {"ObjectDetector": "a detector", "ImageClassifier": "a classifier"}.get(name)
    return f"{name} ({kind})" if kind else name


def refuse_contradictions(model_config: Any, hparams: dict[str, Any], path: str, linked: tuple[str, ...] = (),
                          compared: tuple[str, ...] | None = None) -> None:
    """CheckpointError unless the command line's task and every option it sets (or those named in
    `compared`) equal the checkpoint's.

    Options the task fills in from the data when it trains (its `hparams_from_data`, such as a
    detector's category ids) are not compared, nor RUN_OPTIONS, nor `linked` ones, which the CLI
    sets from the data module only when it builds the classes; neither are options the checkpoint
    lacks.
    """
    if model_config is None or not hparams:
        return
    config = _plain(model_config)
    ours, theirs = config.get("class_path"), hparams.get("_class_path")
    if theirs and ours and ours != theirs:
        raise CheckpointError(
            f"checkpoint {path!r} is of {_task_name(theirs)}, but the config trains {_task_name(ours)}; "
            f"give a checkpoint of this task, or the config the checkpoint was trained with"
        )
    skipped = set(CLI_KEYS) | set(RUN_OPTIONS) | set(linked) | set(getattr(_task_class(ours), "hparams_from_data", ()))
    options = config.get("init_args") or {}
    differ = [
        f"{key} {options[key]!r} (checkpoint: {hparams[key]!r})"
        for key in options
        if key in hparams and key not in skipped and (compared is None or key in compared)
        and _plain(hparams[key]) != options[key]
    ]
    if differ:
        raise CheckpointError(
            f"checkpoint {path!r} was trained with other model options than the command line gives: "
            f"{'; '.join(differ)}; give the options it was trained with, or no --ckpt_path to start a new run"
        )


def _task_class(class_path: str | None):
    if not class_path or "." not in class_path:
        return None
    import importlib

    module, name = class_path.rsplit(".", 1)
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
