"""Seconds and peak resident memory of each stage of an export (report.json ``resources``).

A thread samples the RSS of this process and its children (psutil) every ``interval`` seconds; the
kernel's own high-water mark of the process (``ru_maxrss``) bounds the whole run from below, so a
spike shorter than the sampling interval still shows in ``peak_rss_bytes``."""

from __future__ import annotations

import contextlib
import resource
import threading
import time
from typing import Iterator


def _tree_rss(proc) -> int:
    import psutil

    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return total


class StageMeter:
    """``with meter.stage("export unet"): ...`` (stages follow one another, they do not nest); :meth:`report`
    gives every stage's seconds and peak."""

    def __init__(self, interval: float = 0.05):
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stage_peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t0 = time.perf_counter()
        self.stages: dict[str, dict[str, float | int]] = {}
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            self._observe()

    def _observe(self) -> int:
        try:
            rss = _tree_rss(self._proc)
        except Exception:  # noqa: BLE001 - a vanished child between listing and reading
            return 0
        with self._lock:
            self._stage_peak = max(self._stage_peak, rss)
        return rss

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        with self._lock:
            self._stage_peak = 0
        self._observe()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            end = self._observe()
            with self._lock:
                row = self.stages.setdefault(name, {"seconds": 0.0, "peak_rss_bytes": 0})
                row["seconds"] = round(row["seconds"] + time.perf_counter() - t0, 2)
                row["peak_rss_bytes"] = max(int(row["peak_rss_bytes"]), self._stage_peak)
                row["end_rss_bytes"] = end

    def report(self) -> dict:
        """{"stages": {name: {seconds, peak_rss_bytes, end_rss_bytes}}, "seconds", "peak_rss_bytes", ...}."""
        self._observe()
        with self._lock:
            sampled = max([int(r["peak_rss_bytes"]) for r in self.stages.values()] + [self._stage_peak])
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        return {"seconds": round(time.perf_counter() - self._t0, 2), "peak_rss_bytes": max(sampled, maxrss),
                "ru_maxrss_bytes": maxrss, "sample_interval_s": self._interval,
                "stages": {k: dict(v) for k, v in self.stages.items()}}

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
