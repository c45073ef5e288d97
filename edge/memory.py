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
import os
import threading


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


_statm: tuple[int, int] | None = None  # (pid, fd of /proc/self/statm opened in that process)
_statm_lock = threading.Lock()
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _statm_fd() -> int | None:
    """This process's open /proc/self/statm (Linux), reopened after a fork (the parent's fd names the
    parent); None where there is no procfs."""
    global _statm
    pid = os.getpid()
    with _statm_lock:
        if _statm is None or _statm[0] != pid:
            try:
                _statm = (pid, os.open("/proc/self/statm", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)))
            except OSError:
                _statm = (pid, -1)
        return _statm[1] if _statm[1] >= 0 else None


def rss_bytes(settle: bool = False) -> int:
    """This process's resident set size; with ``settle``, after collecting garbage and handing malloc's
    free lists back to the OS (tens of milliseconds: for before a load, not for every step).

    The scheduler reads it twice per step (a chat token, 4 a batched decode at 4 chats): one pread of a
    kept-open /proc/self/statm (3 us), not psutil's open-read-close (29 us); psutil elsewhere."""
    if settle:
        gc.collect()
        trim_heap()
    fd = _statm_fd()
    if fd is not None:
        try:
            return int(os.pread(fd, 128, 0).split()[1]) * _PAGE  # statm: size resident shared ... (pages)
        except (OSError, IndexError, ValueError):
            pass
    import psutil

    return psutil.Process().memory_info().rss
