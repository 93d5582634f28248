"""The interface every backend module satisfies (BACKENDS in __init__.py lists them), as a Protocol:
a type checker reads a backend module against it, and tests/test_dispatch.py checks each module's
signatures against it.

functional.local_attention and functional.local_self_attention have checked the arguments (shapes,
kernel_size, padding) before a backend sees them, and picked it with can_run.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from .call import Call


class Backend(Protocol):
    def can_run(self, call: Call) -> str | None:
        """None, or why this backend cannot run such a call here (device, dtype, gradients, head
        dim, kernel size). It builds and compiles nothing: a kernel that fails to build or compile
        on first use raises KernelFailed from the call itself, and "auto" goes on to the next."""

    def local_attention(self, *, q: Tensor, k: Tensor | None, v: Tensor, rel_rows: Tensor | None,
                        rel_cols: Tensor | None, kernel_size: int, padding: str) -> Tensor:
        """q, k, v: (B, heads, head_dim, H, W) -> (B, heads, head_dim, H, W) (functional.local_attention)."""

    def local_self_attention(self, *, x: Tensor, query_weight: Tensor, key_weight: Tensor | None,
                             value_weight: Tensor, rel_rows: Tensor | None, rel_cols: Tensor | None,
                             kernel_size: int, heads: int, key_bias: Tensor | None, padding: str) -> Tensor:
        """x: (B, C_in, H, W) -> (B, C_out, H, W), projections included (functional.local_self_attention)."""
