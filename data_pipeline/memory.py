"""Process-wide memory settings for CPU work."""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's largest allowed value
TRIM_THRESHOLD_BYTES = 256 * 2**20


@functools.cache  # once per process: each `run_task` of a dask worker calls it
def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed blocks of up to 32 MB for reuse (Linux; else nothing).

    By default glibc serves large blocks with fresh `mmap`s and gives freed heap back to the
    kernel, so each new array of a few MB (an SFNO activation, a sorted chunk of members)
    page-faults on its first write. Keeping them makes one core's SFNO step about 1.3 x and a
    verification chunk about 1.4 x as fast. Only `mallopt` sets this once Python has started
    (jemalloc or tcmalloc would need `LD_PRELOAD`), hence ctypes.

    It also keeps every thread on the main arena (`M_ARENA_MAX` 1, and `MALLOC_ARENA_MAX=1`
    for the processes started after it, such as dask's workers). A thread's own arena lives
    in heaps of at most 64 MB that glibc unmaps as soon as they are empty, whatever the trim
    threshold, so a task thread's SFNO steps page-faulted about 16,000 times a step of 8
    members, against 200 on the main arena (`tests/test_memory.py`): one arena made the
    runner's single-threaded loops 1.5 x as fast (`benchmarks/ensemble_speed.py`). Call it
    before the threads start: a thread keeps the arena it first allocated from.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl)
        return
    libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    libc.mallopt(M_ARENA_MAX, 1)
    os.environ.setdefault("MALLOC_ARENA_MAX", "1")
