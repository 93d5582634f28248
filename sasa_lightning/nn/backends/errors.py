"""What a backend raises when it cannot run a call here."""

from ...errors import UserError


class BackendUnavailable(UserError, ValueError):
    """The backend cannot run here: no compiler for its kernel, a tensor on a device it does not
    serve, or gradients where it has no backward."""


class KernelFailed(BackendUnavailable):
    """The backend's kernel failed to build or compile on first use: "auto" then warns once and
    goes on with the next capable backend."""
