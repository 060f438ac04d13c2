"""glibc's malloc with at most two heaps: lower peak memory, no slower (measured).

TensorFlow frees and reallocates the same large temporaries every training step
from its thread pools. glibc gives each thread that contends for a heap a new
one, up to 8 per core, and memory freed in one heap is not reused by another, so
the process holds more than it uses. `limit_heap_growth` caps the heaps at two
(the cores of the machines we measure). On the paper's training step (2 cores,
benchmarks/RESULTS-train.md, 2026-12-03) peak RSS fell from 1.51 to 1.47 GB and the
step was no slower (24.0 against 21.5 examples/s back to back). Values are
unchanged; only where memory comes from. Tried and not kept: a fixed mmap
threshold of 128 KiB or 1 MiB (peak 1.30-1.31 GB, but every large temporary then
costs page faults each step: 15-16 examples/s).

Call it before TensorFlow starts its threads (before importing it): the
command-line tools do, in `amych_tf.cli.common`, and so do the benchmarks.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # mallopt's parameter (glibc's malloc.h)
ARENA_MAX = 2


def limit_heap_growth() -> bool:
    """At most ARENA_MAX malloc heaps; False (and nothing changed) where the C library has no mallopt."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_ARENA_MAX, ARENA_MAX) == 1
