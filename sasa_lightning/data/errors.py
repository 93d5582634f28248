"""Errors about what the user gave (paths, files, options), reported by the CLI as one line."""

from ..errors import UserError


class DataError(UserError, ValueError):
    """A data path or file that cannot be used, with what would be right."""


def require_path(path, what: str) -> None:
    """Raise DataError unless `path` exists."""
    from pathlib import Path

    if not Path(path).exists():
        raise DataError(f"{what} {str(path)!r} does not exist")
