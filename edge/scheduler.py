"""THE shared scheduler: one worker runs one step at a time with every thread of the budget, picking
the next step by priority with aging; models load on demand inside a RAM budget and idle ones are
evicted least-recently-used; a bounded queue refuses work with Busy; every job has a cancellable
handle.

Why one step at a time: engines are given all ``threads``; two heavy steps side by side would
oversubscribe the cores and slow both. Interleaving at step granularity (a token, a UNet step, a
decoder call) keeps interactive work interactive: it waits at most one step of a batch job.

The scheduler knows nothing of what a step computes (see edge/jobs.py).
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

from edge.errors import Busy, Cancelled, EdgeError, OutOfMemory
from edge.jobs import JobSpec, Priority, Step

log = logging.getLogger("edge.scheduler")
R = TypeVar("R")
_END = object()

Loader = Callable[[str, int], Any]  # (model_id, threads) -> engine
Estimator = Callable[[str], int]  # model_id -> bytes expected once loaded


class JobHandle(Generic[R]):
    """A submitted job: iterate its steps, wait for its result, or cancel it."""

    _ids = itertools.count(1)

    def __init__(self, spec: JobSpec):
        self.id = next(self._ids)
        self.spec = spec
        self.state = "queued"  # queued | running | done | failed | cancelled
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.first_step: float | None = None
        self.finished: float | None = None
        self.last_ran = self.submitted
        self.steps = 0
        self.last_step: Step | None = None
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Event()
        self._cancel = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._gen = None
        self._engine = None

    # -- caller side ------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the job at its next step (or at once if it has not started)."""
        self._cancel.set()
        sched = self.spec.meta.get("_scheduler")
        if sched is not None:
            sched._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def events(self, timeout: float | None = None) -> Iterator[Step]:
        """Steps as they happen; ends when the job ends (then call result() for the outcome)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:  # short waits keep Ctrl-C responsive in the caller's thread
                ev = self._events.get(timeout=0.25)
            except queue.Empty:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {self.id} produced no step for {timeout} s") from None
                continue
            if ev is _END:
                self._events.put(_END)  # later iterations end too
                return
            yield ev

    def result(self, timeout: float | None = None) -> R:
        """The job's return value; raises its error (Cancelled, BadRequest ...)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    # -- scheduler side ---------------------------------------------------------------------
    def _finish(self, state: str, result: Any = None, error: BaseException | None = None) -> None:
        self.state = state
        self._result, self._error = result, error
        self.finished = time.monotonic()
        self._events.put(_END)
        self._done.set()


@dataclass
class LoadedModel:
    id: str
    engine: Any
    footprint: int
    loaded_at: float
    last_used: float
    running: int = 0
    keep_until: float | None = None  # None = forever
    pinned: bool = False

    @property
    def slots(self) -> int:
        return max(1, int(getattr(self.engine, "slots", 1)))


@dataclass
class Metrics:
    step_seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    step_count: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tokens: int = 0
    token_seconds: float = 0.0
    evictions: int = 0
    loads: int = 0
    jobs: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    busy_refusals: int = 0


class Scheduler:
    """Runs step-generator jobs against on-demand loaded engines.

    policy "priority" (default) interleaves steps by priority with aging; "fifo" runs jobs one
    after another in arrival order (the baseline bench/mixed.py compares against).
    """

    def __init__(self, *, loader: Loader, estimate: Estimator, threads: int, ram_budget: int,
                 max_queue: int = 64, keep_alive: float = 300.0, aging: float = 2.0, policy: str = "priority",
                 used_outside: Callable[[], int] | None = None):
        if policy not in ("priority", "fifo"):
            raise ValueError(policy)
        self.loader, self.estimate = loader, estimate
        self.threads, self.ram_budget, self.max_queue = threads, ram_budget, max_queue
        self.keep_alive, self.aging, self.policy = keep_alive, aging, policy
        self.metrics = Metrics()
        self._cv = threading.Condition()
        self._queued: list[JobHandle] = []
        self._running: list[JobHandle] = []
        self._models: dict[str, LoadedModel] = {}
        self._loading: dict[str, int] = {}  # model id -> estimated bytes
        self._load_errors: dict[str, BaseException] = {}
        self._pins: set[str] = set()
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="edge-scheduler", daemon=True)
        self._worker.start()

    # -- public API -------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> JobHandle:
        """Queue a job; raises Busy at once when the queue is full."""
        h: JobHandle = JobHandle(spec)
        spec.meta["_scheduler"] = self
        with self._cv:
            if self._closed:
                raise EdgeError("the runtime is closed")
            if len(self._queued) >= self.max_queue:
                self.metrics.busy_refusals += 1
                retry = max(1.0, round(self._eta_seconds(), 1))
                raise Busy(f"the scheduler queue is full ({self.max_queue} jobs waiting). Retry in {retry:.0f} s "
                           "or raise EDGE_MAX_QUEUE.", retry_after=retry)
            self._queued.append(h)
            self.metrics.jobs[spec.label or "job"] += 1
            self._cv.notify_all()
        return h

    def pin(self, model_id: str, pinned: bool = True) -> None:
        """Pinned models are never evicted for space or by keep_alive."""
        with self._cv:
            (self._pins.add if pinned else self._pins.discard)(model_id)
            if model_id in self._models:
                self._models[model_id].pinned = pinned

    def unload(self, model_id: str) -> bool:
        """Unload an idle model now; returns False if it is not loaded. Busy models are not touched."""
        with self._cv:
            m = self._models.get(model_id)
            if m is None or m.running or self._wanted(model_id):
                return False
            del self._models[model_id]
        m.engine.close()
        return True

    def loaded(self) -> list[dict[str, Any]]:
        """What is loaded: id, RAM footprint, running jobs, idle seconds, expiry."""
        now = time.monotonic()
        with self._cv:
            return [{"id": m.id, "ram_bytes": m.footprint, "running": m.running, "slots": m.slots,
                     "idle_seconds": 0.0 if m.running else round(now - m.last_used, 1), "pinned": m.pinned,
                     "expires_in": None if m.keep_until is None else round(max(0.0, m.keep_until - now), 1)}
                    for m in self._models.values()]

    def jobs(self) -> list[JobHandle]:
        """A snapshot of the running and queued jobs, oldest first."""
        with self._cv:
            return sorted(self._running + self._queued, key=lambda h: h.id)

    def queue_depth(self) -> int:
        with self._cv:
            return len(self._queued)

    def running_count(self) -> int:
        with self._cv:
            return len(self._running)

    def ram_used(self) -> int:
        with self._cv:
            return sum(m.footprint for m in self._models.values())

    def close(self) -> None:
        """Cancel every job, stop the worker, close every engine."""
        with self._cv:
            self._closed = True
            for h in self._queued + self._running:
                h._cancel.set()
            self._cv.notify_all()
        self._worker.join(timeout=30)
        with self._cv:
            models, self._models = list(self._models.values()), {}
        for m in models:
            m.engine.close()

    # -- internals --------------------------------------------------------------------------
    def _wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def _eta_seconds(self) -> float:
        n = self.metrics.step_count
        avg = (sum(self.metrics.step_seconds.values()) / max(1, sum(n.values()))) if n else 0.05
        return avg * 32 * max(1, len(self._queued)) / max(1, len(self._running) or 1)

    def _wanted(self, model_id: str) -> bool:
        return any(h.spec.model_id == model_id for h in self._queued + self._running)

    def _score(self, h: JobHandle, now: float) -> tuple:
        if self.policy == "fifo":
            return (h.submitted,)
        waited = now - h.last_ran
        return (int(h.spec.priority) * self.aging - waited, h.last_ran)

    def _pick(self, now: float) -> JobHandle | None:
        """Under the lock: the next job to step (a running one, or a queued one that can start)."""
        cands = list(self._running)
        if self.policy == "fifo" and self._running:
            return self._running[0]
        queued = self._queued[:1] if self.policy == "fifo" else self._queued  # FIFO: only the head may start
        for h in queued:
            m = self._models.get(h.spec.model_id)
            if m is not None and m.running < m.slots:
                cands.append(h)
        if not cands:
            return None
        best = min(cands, key=lambda h: self._score(h, now))
        if best.state == "queued":
            m = self._models[best.spec.model_id]
            m.running += 1
            best._engine = m.engine
            best.state = "running"
            best.started = now
            self._queued.remove(best)
            self._running.append(best)
        return best

    def _maintain(self, now: float) -> float:
        """Under the lock: drop cancelled queued jobs, start loads, expire idle models.
        Returns seconds until the next keep-alive expiry (for the wait)."""
        for h in [h for h in self._queued if h.cancelled]:
            self._queued.remove(h)
            h._finish("cancelled", error=Cancelled("cancelled before it started"))
        for h in list(self._queued):
            mid = h.spec.model_id
            if mid in self._load_errors:
                self._queued.remove(h)
                h._finish("failed", error=self._load_errors[mid])
        if not any(h.spec.model_id in self._load_errors for h in self._queued):
            self._load_errors.clear()
        for mid in dict.fromkeys(h.spec.model_id for h in self._queued):
            if mid not in self._models and mid not in self._loading:
                self._try_start_load(mid)
        nxt = 60.0
        for m in list(self._models.values()):
            if m.running or m.pinned or m.keep_until is None or self._wanted(m.id):
                continue
            if now >= m.keep_until:
                self._evict(m, reason="keep_alive expired")
            else:
                nxt = min(nxt, m.keep_until - now)
        return nxt

    def _try_start_load(self, mid: str) -> None:
        try:
            need = int(self.estimate(mid))
        except BaseException as e:  # unknown model, not installed ...
            self._load_errors[mid] = e
            return
        if need > self.ram_budget:
            self._load_errors[mid] = OutOfMemory(
                f"model {mid!r} needs about {need / 2**20:.0f} MiB but the RAM budget is "
                f"{self.ram_budget / 2**20:.0f} MiB. Raise EDGE_RAM_BUDGET (or --ram-budget) or use a smaller model.",
                param="model")
            return
        used = sum(m.footprint for m in self._models.values()) + sum(self._loading.values())
        idle = sorted((m for m in self._models.values()
                       if not m.running and not m.pinned and not self._wanted(m.id)), key=lambda m: m.last_used)
        while used + need > self.ram_budget and idle:
            victim = idle.pop(0)
            used -= victim.footprint
            self._evict(victim, reason=f"making room for {mid}")
        if used + need > self.ram_budget:
            return  # wait: a busy model will become idle; never evict one with work
        self._loading[mid] = need
        threading.Thread(target=self._load, args=(mid, need), name=f"edge-load-{mid}", daemon=True).start()

    def _evict(self, m: LoadedModel, reason: str) -> None:
        del self._models[m.id]
        self.metrics.evictions += 1
        log.info("unloading %s (%s)", m.id, reason)
        threading.Thread(target=m.engine.close, name=f"edge-close-{m.id}", daemon=True).start()

    def _load(self, mid: str, need: int) -> None:
        import psutil

        proc = psutil.Process()
        before = proc.memory_info().rss
        t0 = time.monotonic()
        try:
            engine = self.loader(mid, self.threads)
        except BaseException as e:
            with self._cv:
                self._loading.pop(mid, None)
                self._load_errors[mid] = e
                self._cv.notify_all()
            return
        measured = max(0, proc.memory_info().rss - before)
        with self._cv:
            self._loading.pop(mid, None)
            now = time.monotonic()
            self._models[mid] = LoadedModel(id=mid, engine=engine, footprint=max(measured, need), loaded_at=now,
                                            last_used=now, pinned=mid in self._pins,
                                            keep_until=self._expiry(None, now))
            self.metrics.loads += 1
            log.info("loaded %s in %.2f s (%.0f MiB)", mid, now - t0, max(measured, need) / 2**20)
            self._cv.notify_all()

    def _expiry(self, keep_alive: float | None, now: float) -> float | None:
        ka = self.keep_alive if keep_alive is None else keep_alive
        return None if ka < 0 else now + ka

    def _run(self) -> None:
        while True:
            with self._cv:
                while True:
                    if self._closed:
                        for h in self._queued + self._running:
                            self._close_job(h, "cancelled", error=Cancelled("the runtime is shutting down"))
                        self._queued.clear()
                        self._running.clear()
                        return
                    now = time.monotonic()
                    wait = self._maintain(now)
                    job = self._pick(now)
                    if job is not None:
                        break
                    self._cv.wait(timeout=min(wait, 1.0))
            self._step(job)

    def _step(self, h: JobHandle) -> None:
        """Run one step of ``h`` in this worker thread (engines release the GIL)."""
        if h.cancelled:
            with self._cv:
                self._close_job(h, "cancelled", error=Cancelled("cancelled"))
            return
        t0 = time.monotonic()
        try:
            if h._gen is None:
                h._gen = h.spec.work(h._engine)
            step = next(h._gen)
        except StopIteration as stop:
            with self._cv:
                self._close_job(h, "done", result=stop.value)
            return
        except BaseException as e:
            if not isinstance(e, EdgeError):
                log.exception("job %s (%s) failed", h.id, h.spec.label)
            with self._cv:
                self._close_job(h, "failed", error=e)
            return
        t1 = time.monotonic()
        dt = t1 - t0
        kind = getattr(step, "kind", "step")
        self.metrics.step_seconds[kind] += dt
        self.metrics.step_count[kind] += 1
        ntok = getattr(step, "tokens", 0)
        if ntok:
            self.metrics.tokens += ntok
            self.metrics.token_seconds += dt
        h.steps += 1
        h.last_step = step
        h.last_ran = t1
        if h.first_step is None:
            h.first_step = t1
        h._events.put(step)

    def _close_job(self, h: JobHandle, state: str, result: Any = None, error: BaseException | None = None) -> None:
        """Under the lock: finish ``h``, free its slot, set its model's keep-alive."""
        if h._gen is not None:
            try:
                h._gen.close()
            except BaseException:  # an engine's cleanup failing must not kill the scheduler
                log.exception("closing job %s", h.id)
        if h in self._running:
            self._running.remove(h)
            m = self._models.get(h.spec.model_id)
            if m is not None:
                m.running -= 1
                now = time.monotonic()
                m.last_used = now
                m.keep_until = self._expiry(h.spec.keep_alive, now)
        if h in self._queued:
            self._queued.remove(h)
        h._engine = None
        h._finish(state, result=result, error=error)
        self._cv.notify_all()
