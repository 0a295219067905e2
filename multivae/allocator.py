"""glibc's malloc, told to keep freed memory for reuse (a per-process setting; numerics are unchanged).

torch allocates CPU tensors with posix_memalign. glibc serves blocks above its mmap threshold (which grows to
at most 32 MiB) with a fresh mmap and unmaps them on free, so every large activation, gradient and optimizer
temporary (40-48 MB each on ML-20M) is page-faulted and zeroed by the kernel again at every step: about 100k
minor faults per step, 1.35x of a training step's time (bench/README.md, "Page faults"). With mmap off and
heap trimming off, freed blocks are reused instead; peak RSS grows by about 20 %.
From the environment, before the process starts, the same is GLIBC_TUNABLES=KEEP_FREED_MEMORY_TUNABLES.
"""

from __future__ import annotations

import ctypes
import ctypes.util

KEEP_FREED_MEMORY_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4     # mallopt parameter numbers, <malloc.h>
MALLOC_MODES = ("keep", "default")

_kept = False


def keep_freed_memory() -> bool:
    """Turn off mmap for malloc and heap trimming in this process (idempotent). Returns False where there is
    no glibc (macOS, musl): nothing is changed there. It cannot be undone within the process."""
    global _kept
    if _kept:
        return True
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 as size_t: the largest threshold, i.e. never trim. Setting either also stops the dynamic threshold.
    _kept = bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, -1))
    return _kept
