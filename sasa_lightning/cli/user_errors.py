"""Which errors are the user's to fix, and their message on one line, read from an exception's chain."""

from __future__ import annotations

from ..errors import UserError


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
