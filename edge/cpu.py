"""Who gets the CPU: the batch lane's OS scheduling class, and how many cores other programs leave us.

Two facts the shared scheduler builds on (see edge/scheduler.py):

* **Batch threads run in the OS's idle class.** On Linux a thread may put itself in ``SCHED_IDLE``:
  the kernel then runs it only on a core no normal thread wants, preempts it the moment one wakes,
  and counts a core running only idle-class threads as free when it places a waking thread. Threads
  inherit the class of the thread that creates them, so onnxruntime's intra-op pool threads and
  llama.cpp's OpenMP threads are made from a thread already in the class (:func:`in_batch_class`,
  the batch lane's worker). Elsewhere (macOS, Windows) nothing changes: the scheduler then relies on
  step interleaving alone, as documented in the README.
* **Threads follow what the CPU can give now.** llama.cpp's threads spin at barriers: when another
  process keeps one of two cores busy, ``n_threads=2`` decodes 20-60x slower than ``n_threads=1``.
  :class:`CpuLoad` samples the cores other processes keep busy (system CPU time minus this process's
  own, from ``psutil``) a few times a second, and :meth:`CpuLoad.threads` turns that into a thread
  count for the next step. Where psutil cannot read system CPU times the budget is used as given.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable, TypeVar

log = logging.getLogger("edge.cpu")
T = TypeVar("T")
_local = threading.local()

# ---------------------------------------------------------------------------------------------- classes


def lower_this_thread() -> str:
    """Put the calling thread (not the process) in the batch class. Returns what was done:
    "idle" (Linux SCHED_IDLE), "nice" (Linux nice 19 where SCHED_IDLE is refused) or "none"."""
    if getattr(_local, "lowered", None):
        return _local.lowered
    how = "none"
    if sys.platform.startswith("linux"):
        try:  # on Linux pid 0 is the calling thread
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            how = "idle"
        except (AttributeError, OSError):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
                how = "nice"
            except OSError:
                pass
    _local.lowered = how
    return how


def thread_class(tid: int | None = None) -> str:
    """"idle", "nice" or "normal" for a thread of this process (the calling one by default); Linux only."""
    tid = threading.get_native_id() if tid is None else tid
    try:
        if os.sched_getscheduler(tid) == getattr(os, "SCHED_IDLE", -1):
            return "idle"
        return "nice" if os.getpriority(os.PRIO_PROCESS, tid) > 0 else "normal"
    except (AttributeError, OSError):
        return "normal"


def set_lanes(enabled: bool) -> None:
    """Mark the calling thread as working for a scheduler whose batch lane uses the batch class
    (the scheduler's load threads call this; :func:`in_batch_class` then applies)."""
    _local.lanes = enabled


def in_batch_class(make: Callable[[], T]) -> T:
    """``make()`` called so that the threads it creates inherit the batch class: in a short-lived
    lowered thread when the caller works for a lanes scheduler and is not lowered itself; directly
    otherwise (the batch worker is already lowered; other schedulers keep today's behaviour)."""
    if not getattr(_local, "lanes", False) or getattr(_local, "lowered", None):
        return make()
    box: dict = {}

    def run() -> None:
        lower_this_thread()
        try:
            box["value"] = make()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=run, name="edge-batch-init", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------------------------------------- load


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class CpuLoad:
    """Cores kept busy by other processes (an exponential moving average, sampled every ``interval`` s
    in a daemon thread).

    Busy = user + system + irq + softirq + steal time of the whole machine, minus this process's own
    user + system time. Niced programs (``nice`` time) are left out: they yield to us."""

    def __init__(self, *, cores: int | None = None, interval: float = 0.2, alpha: float = 0.5):
        self.cores = cores or _cores()
        self.interval, self.alpha = interval, alpha
        self.outside = 0.0
        self.available = self._probe()
        self._last: tuple[float, float, float] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._threads_now: dict[int, int] = {}

    @staticmethod
    def _probe() -> bool:
        try:
            import psutil

            psutil.cpu_times()
            psutil.Process().cpu_times()
            return True
        except Exception:  # noqa: BLE001 - no system CPU times here: static thread counts
            return False

    def _read(self) -> tuple[float, float, float]:
        import psutil

        s = psutil.cpu_times()
        busy = s.user + s.system + sum(getattr(s, k, 0.0) for k in ("irq", "softirq", "steal"))
        own = psutil.Process().cpu_times()
        return time.monotonic(), busy, own.user + own.system

    def sample(self) -> float:
        """Take one sample now; returns the smoothed outside load in cores."""
        if not self.available:
            return 0.0
        now = self._read()
        with self._lock:
            if self._last is not None and now[0] > self._last[0]:
                dt = now[0] - self._last[0]
                outside = ((now[1] - self._last[1]) - (now[2] - self._last[2])) / dt
                outside = min(float(self.cores), max(0.0, outside))
                self.outside += self.alpha * (outside - self.outside)
            self._last = now
            return self.outside

    def start(self) -> "CpuLoad":
        if self.available and self._thread is None:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="edge-cpu-load", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed read keeps the last figure
                log.debug("cpu sample failed", exc_info=True)

    def threads(self, budget: int) -> int:
        """Threads for the next step, at most ``budget``: one per core left free by other programs
        (a core counts as free while others use less than half of it). Going up needs a margin, so a
        load hovering at the threshold does not flip the count every step."""
        if not self.available:
            return budget
        free = self.cores - self.outside
        want = max(1, min(budget, int(free + 0.5)))
        last = self._threads_now.get(budget, budget)
        if want > last and free < want - 0.3:
            want = last
        self._threads_now[budget] = want
        return want


_monitor: CpuLoad | None = None
_monitor_lock = threading.Lock()


def monitor() -> CpuLoad:
    """The process-wide CpuLoad (started on first use)."""
    global _monitor
    with _monitor_lock:
        if _monitor is None:
            _monitor = CpuLoad().start()
        return _monitor


# ---------------------------------------------------------------------------------------------- facts

SIMD_FLAGS = ("avx", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",  # x86
              "fma", "f16c",  # (/proc/cpuinfo flags)
              "neon", "asimd", "asimddp", "fphp", "asimdhp", "i8mm", "sve", "bf16")  # arm ("Features")


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The SIMD features of this CPU that matter to inference (AVX2, AVX-512 VNNI, NEON/ASIMD dot product,
    ...), read from ``/proc/cpuinfo``'s ``flags`` (x86) or ``Features`` (arm) line; empty where it is not
    readable (macOS, Windows)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                cpuinfo = f.read(1 << 20)
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split()) & frozenset(SIMD_FLAGS)
    return frozenset()
