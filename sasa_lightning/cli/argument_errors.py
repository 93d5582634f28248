"""jsonargparse's argument errors as one line: what is wrong, the nearest valid key, and --help."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re

from ..compat import option_strings

TRAINER_COMMANDS = ("fit", "validate", "test", "predict")


def _keys(parser, subcommand: str | None) -> list[str]:
    """Every dotted option the subcommand's parser knows (init_args of a class chosen by the config
    are known only once it is chosen, so they are not all here)."""
    options = option_strings(parser, subcommand)
    return sorted({option[2:] for option in options if option.startswith("--")
                   and option not in ("--help", "--config", "--print_config")})


def _config_files(args: list[str]) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "--config"]


def _flat_keys(tree, prefix: str = "") -> set[str]:
    if not isinstance(tree, dict):
        return set()
    keys = set()
    for key, value in tree.items():
        keys.add(f"{prefix}{key}")
        keys |= _flat_keys(value, f"{prefix}{key}.")
    return keys


def _init_args(class_path: str) -> list[str]:
    module, name = class_path.rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    return [key for key, parameter in inspect.signature(cls).parameters.items()
            if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)]


def _source(configs: dict, *keys: str) -> str:
    """' (in 'x.yaml')' for the last config file that sets one of the keys, or ''."""
    sources = [path for path, tree in configs.items() if set(keys) & _flat_keys(tree)]
    return f" (in {sources[-1]!r})" if sources else ""


def explain_argument_error(parser, args: list[str] | None, error: Exception) -> str:
    import yaml

    args = list(args or [])
    subcommand = next((a for a in args if a in TRAINER_COMMANDS), None)
    message = " ".join(str(error).split())
    configs = {}
    for path in _config_files(args):
        try:
            with open(path) as file:
                configs[path] = yaml.safe_load(file)
        except yaml.YAMLError as yaml_error:
            where = getattr(yaml_error, "problem_mark", None)
            line = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            problem = getattr(yaml_error, "problem", None) or type(yaml_error).__name__
            message = f"config {path!r} is not valid YAML{line}: {problem}"
        except OSError:
            pass
    # "does not accept option 'trainer.max_epoch'", "Key 'x' is not expected", "Unrecognized arguments: --x 3"
    bad = re.search(r"does not accept option '([\w.]+)'|[Kk]ey '([\w.]+)' is not expected|[Uu]nrecognized arguments: --([\w.]+)",
                    message)
    # An unknown init arg of the model or data class: jsonargparse reports the Union of the class and None.
    unaccepted = re.search(r"Parser key \"(\w+)\":.*class_path '([\w.]+)': Option '(\w+)' is not accepted", message)
    hint = ""
    if unaccepted:
        section, class_path, option = unaccepted.groups()
        message = f"{section} option {option!r} is not one of {class_path.rsplit('.', 1)[-1]}'s"
        message += _source(configs, f"{section}.{option}", f"{section}.init_args.{option}")
        close = difflib.get_close_matches(option, _init_args(class_path), n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean {close[0]!r}?"
    elif bad:
        key = next(group for group in bad.groups() if group)
        message += _source(configs, key)
        close = difflib.get_close_matches(key, _keys(parser, subcommand), n=1, cutoff=0.6)
        if close:
            hint = f"; did you mean {close[0]!r}?"
    command = f"sasa {subcommand} --help" if subcommand else "sasa --help"
    return f"{message}{hint} (see {command})"
