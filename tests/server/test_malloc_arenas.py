"""edge/server/app.py bound_malloc_arenas: `edge-run serve` caps glibc's malloc arenas (bench/soak.py measured
half the RSS growth with 2), so many threads allocating at once share them instead of each keeping its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = r"""
import ctypes, ctypes.util, re, sys, threading
from edge.server.app import bound_malloc_arenas
capped = bound_malloc_arenas() if sys.argv[1] == "capped" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
start, held = threading.Barrier(8), threading.Barrier(8)
def work():
    start.wait()
    ptrs = [libc.malloc(64 << 10) for _ in range(64)]  # below the mmap threshold: from an arena
    held.wait()
    for p in ptrs:
        libc.free(p)
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc.open_memstream.restype = ctypes.c_void_p
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
f = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(f)); libc.fclose(ctypes.c_void_p(f))
print(capped, len(re.findall(r'<heap nr="\d+"', buf.value.decode())))
"""


def _arenas(mode: str) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=60,
                         check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_serve_caps_malloc_arenas_so_threads_share_them():
    assert _arenas("default")[1] > 2  # glibc's default: threads allocating at once get arenas of their own
    capped, n = _arenas("capped")
    assert capped == "True" and n <= 2
