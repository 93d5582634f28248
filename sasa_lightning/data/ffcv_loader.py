"""FFCV's Loader, built without corrupting numba's shared array types.

FFCV 1.0.2's memory managers declare their state arrays read-only by writing `mutable = False`
on `nb.uint8[::1]` and friends. Those are numba's interned types, one object per process: every
dispatcher already compiled for a C-contiguous uint8 array (FFCV's own `imdecode`, ours, the
user's) holds that object in the keys of its `overloads` OrderedDict, and the write changes its
hash. When such a dispatcher is collected, numba's finalizer iterates the OrderedDict, cannot
find the re-hashed key and raises `KeyError: (Array(uint8, 1, 'C', True, ...), ...)`, printed
as "Exception ignored in: <finalize object ...>" hundreds of times in a day of tests.

Importing this module replaces, once, the OS cache manager's `state_type` and `compile_reader`
(whose declared return type is that shared `nb.uint8[::1]`, read-only once mutated) with versions
that build a distinct read-only type (`readonly=True` interns a separate type) and so leave the
shared ones alone. The types are those FFCV 1.0.2 ends up compiling with: the data and the slices
read from it are read-only, the pointer and size arrays stay mutable (a typo, `t1.multable`, made
FFCV set its first array read-only twice). The process cache's `state_type` does the same, but
FFCV never calls it (its reader is typed from the arguments), so it is left as it is.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from ffcv.loader import Loader
from ffcv.memory_managers import OSCacheManager
from ffcv.pipeline.compiler import Compiler


READONLY_BYTES = nb.types.Array(nb.uint8, 1, "C", readonly=True)


def _os_cache_state_type(self) -> nb.types.Tuple:
    return nb.types.Tuple([READONLY_BYTES, nb.uint64[::1], nb.uint64[::1]])


def _os_cache_compile_reader(self):
    def read(address, mem_state):
        size = mem_state[2][np.searchsorted(mem_state[1], address)]
        return mem_state[0][address : address + size]

    return Compiler.compile(read, READONLY_BYTES(nb.uint64, self.state_type))


OSCacheManager.state_type = property(_os_cache_state_type)
OSCacheManager.compile_reader = _os_cache_compile_reader


def ffcv_loader(path: str, **options) -> Loader:
    """`ffcv.loader.Loader(path, **options)`; importing this module installs the fix above."""
    return Loader(path, **options)
