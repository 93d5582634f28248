"""Implementations of local attention, one module each, all with the same two functions:

- local_attention(q, k, v, rel_rows, rel_cols, kernel_size, padding)
- local_self_attention(x, query_weight, key_weight, value_weight, rel_rows, rel_cols,
  kernel_size, heads, key_bias, padding)

fused.py is not a backend: it is the autograd shared by the backends with a fused kernel.
"""

from . import chunked, compiled, cpu, flex, reference

BACKENDS = {"reference": reference, "chunked": chunked, "cpu": cpu, "compiled": compiled, "flex": flex}
