"""Process memory as the scheduler measures it: resident bytes, and malloc's free lists handed back first.

RSS growth around a load is what the scheduler charges a model for. A load that reuses memory an earlier
(unloaded) model freed into malloc's free lists grows RSS by little; one during which Python's cyclic
collector frees an unloaded engine's sessions can even shrink it: the same tiny LCM load measured 0 to
82 MiB in one test session. Settling first (collect garbage, hand the free lists back) makes the growth
the model's own bytes."""

from __future__ import annotations

import ctypes
import functools
import gc


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # glibc only
        return libc
    except (OSError, AttributeError):
        return None


def trim_heap() -> None:
    """Give malloc's free memory back to the OS (glibc's malloc_trim over every arena; a no-op elsewhere)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def rss_bytes(settle: bool = False) -> int:
    """This process's resident set size; with ``settle``, after collecting garbage and handing malloc's
    free lists back to the OS (tens of milliseconds: for before a load, not for every step)."""
    import psutil

    if settle:
        gc.collect()
        trim_heap()
    return psutil.Process().memory_info().rss
