"""THE shared scheduler: models load on demand inside a RAM budget and idle ones are evicted
least-recently-used; a bounded queue refuses work with Busy; every job has a cancellable handle; jobs
are step generators (edge/jobs.py) and the scheduler knows nothing of what a step computes.

Policies:

* ``lanes`` (default): two workers run side by side, one per priority. The interactive lane (chat
  tokens, clicks) runs at the normal OS class; the batch lane (UNet steps, VAE/TAESD decodes, the SAM
  encoder, batch chats) runs its steps -- and the thread pools its models create -- in the OS's idle
  class (edge/cpu.py). A batch step may last seconds, but the kernel hands its cores to an arriving
  interactive step within a scheduler tick, so interactive work never waits for a batch step to end.
  A batch job never starves: while it runs, an interactive lane that has been busy for over a second
  gives back ``batch_share`` of its time. Each step's thread count follows the cores other programs
  leave free (``CpuLoad``): llama.cpp's spinning threads collapse when one of them loses its core.
* ``priority``: one worker runs one step at a time with every thread, picking the next step by
  priority with aging (interactive work waits at most one batch step). Today's behaviour before
  lanes; kept as the peer bench/mixed.py measures against.
* ``fifo``: one worker runs jobs one after another in arrival order (the other baseline).

Memory: a loaded model's footprint is the larger of what was planned for it -- the estimate (its files,
KV / embedding caches) plus the largest ``work_bytes`` of the jobs admitted on it (an image decode's
activations, which onnxruntime's arena keeps) -- and what was measured: the process RSS growth around
its load plus the net growth around each of its steps (lazily created sessions, arenas growing, mmapped
GGUF pages touched at the first decode). Before a load or a job that needs more, idle models are evicted
least-recently-used; if running jobs hold the memory the load or job waits for them (at most
``memory_wait`` seconds); if nothing could ever free enough it fails at once with OutOfMemory naming
the model, the bytes, the budget and the fix.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, TypeVar

from edge import cpu
from edge.errors import Busy, Cancelled, EdgeError, OutOfMemory
from edge.jobs import JobSpec, Outcome, Priority, Step
from edge.memory import rss_bytes

log = logging.getLogger("edge.scheduler")
R = TypeVar("R")
_END = object()

Loader = Callable[[str, int], Any]  # (model_id, threads) -> engine
Estimator = Callable[[str], int]  # model_id -> bytes expected once loaded
POLICIES = ("lanes", "priority", "fifo")


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


class JobHandle(Outcome[R]):
    """A submitted job: iterate its steps, wait for its result, or cancel it."""

    _ids = itertools.count(1)

    def __init__(self, spec: JobSpec):
        super().__init__()
        self.id = next(self._ids)
        self.what = f"job {self.id}"
        self.spec = spec
        self.state = "queued"  # queued | running | done | failed | cancelled
        self.submitted = time.monotonic()
        self.started: float | None = None
        self.first_step: float | None = None
        self.finished: float | None = None
        self.last_ran = self.submitted
        self.steps = 0
        self.last_step: Step | None = None
        self._events: queue.SimpleQueue = _EventQueue(self)
        self._cancel = threading.Event()
        self._gen = None
        self._engine = None

    # -- caller side ------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        """The model the job runs on (the door resolved it)."""
        return self.spec.model_id

    def cancel(self) -> None:
        """Stop the job at its next step (or at once if it has not started)."""
        self._cancel.set()
        sched = self.spec.meta.get("_scheduler")
        if sched is not None:
            sched._wake()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

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

    def take_events(self) -> tuple[list[Step], bool]:
        """The steps that arrived since the last call (never blocks) and whether the job has ended."""
        out: list[Step] = []
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return out, False
            if ev is _END:
                self._events.put(_END)
                return out, True
            out.append(ev)

    # -- scheduler side ---------------------------------------------------------------------
    def _finish(self, state: str, result: Any = None, error: BaseException | None = None) -> None:
        self.state = state
        self._result, self._error = result, error
        self.finished = time.monotonic()
        self._events.put(_END)
        self._done.set()
        self._notify()


class _EventQueue(queue.SimpleQueue):
    """A job's step queue whose put() also wakes the handle's listeners (JobHandle.add_listener)."""

    def __init__(self, handle: "JobHandle"):
        self._handle = handle

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        if item is not _END:  # the end is notified by _finish once result() is ready
            self._handle._notify()


@dataclass
class LoadedModel:
    id: str
    engine: Any
    planned: int  # the estimate (files, caches)
    loaded_at: float
    last_used: float
    running: int = 0
    keep_until: float | None = None  # None = forever
    pinned: bool = False
    measured: int = 0  # RSS growth around the load plus the net growth around this model's steps
    work: int = 0  # the largest work_bytes of a job admitted on this model (arenas keep it)
    measured_peak: int = 0
    at_load: int = 0  # the RSS growth around the load alone (the model at rest, before any job)

    @property
    def footprint(self) -> int:
        """Bytes this model is counted for: its own bytes (the plan, or the load's measured growth if larger)
        plus the working set its jobs declared, or the whole measurement, the larger. A job is admitted against
        exactly that, so a model that ran within a budget is counted within it afterwards too."""
        return max(max(self.planned, self.at_load) + self.work, self.measured_peak)

    def learned(self) -> int:
        """What a reload of this model plans, before its first job's working set is added: the model's own
        bytes as measured (its load, or the peak less the declared working set its jobs kept), or the plan if
        larger. Planning the whole peak and then adding the working set again refused a reload that had just run."""
        return max(self.planned, self.at_load, self.measured_peak - self.work)

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
    threads_now: int = 0  # threads the last step was given
    thread_changes: int = 0  # how often the adaptive thread count changed
    share_waits: float = 0.0  # seconds the interactive lane gave back to a waiting batch job
    evicted: list[tuple[str, str]] = field(default_factory=list)  # (model id, why), oldest first (last 100)


class Scheduler:
    """Runs step-generator jobs against on-demand loaded engines (see the module docstring for the
    policies). ``adaptive_threads`` (default: on for lanes) re-decides each step's thread count from
    the cores other programs keep busy; engines with a ``set_threads(n)`` method follow it."""

    def __init__(self, *, loader: Loader, estimate: Estimator, threads: int, ram_budget: int,
                 max_queue: int = 64, keep_alive: float = 300.0, aging: float = 2.0, policy: str = "lanes",
                 adaptive_threads: bool | None = None, batch_share: float = 0.1,
                 cpu_load: cpu.CpuLoad | None = None, memory_wait: float = 300.0):
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r}: use one of {', '.join(POLICIES)}")
        if not 0.0 <= batch_share < 1.0:
            raise ValueError(f"batch_share must be in [0, 1), got {batch_share}")
        self.loader, self.estimate = loader, estimate
        self.threads, self.ram_budget, self.max_queue = threads, ram_budget, max_queue
        self.keep_alive, self.aging, self.policy = keep_alive, aging, policy
        self.batch_share = batch_share
        self.memory_wait = memory_wait  # seconds a load or job may wait for running jobs to free RAM
        self._mem_waits: dict[Any, float] = {}  # model id (a load) or job handle -> when it began to wait
        self._learned: dict[str, int] = {}  # model id -> bytes it was measured at when last loaded
        self._closing: set[threading.Thread] = set()  # evicted engines closing in the background
        adaptive = policy == "lanes" if adaptive_threads is None else adaptive_threads
        self.cpu_load = (cpu_load or cpu.monitor()) if adaptive else None
        self.metrics = Metrics()
        self._cv = threading.Condition()
        self._queued: list[JobHandle] = []
        self._running: list[JobHandle] = []
        self._models: dict[str, LoadedModel] = {}
        self._loading: dict[str, int] = {}  # model id -> estimated bytes
        self._load_errors: dict[str, BaseException] = {}
        self._pins: set[str] = set()
        self._closed = False
        lanes: list[Priority | None] = [Priority.INTERACTIVE, Priority.BATCH] if policy == "lanes" else [None]
        self._workers = [threading.Thread(target=self._run, args=(lane,), daemon=True,
                                          name="edge-scheduler" + (f"-{lane.name.lower()}" if lane is not None else ""))
                         for lane in lanes]
        for w in self._workers:
            w.start()

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
            self._learned[model_id] = m.learned()
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
        for w in self._workers:
            w.join(timeout=30)
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

    def _pick(self, now: float, lane: Priority | None = None) -> JobHandle | None:
        """Under the lock: the next job of ``lane`` (None = any) to step: a running one, or a queued one
        that can start."""
        cands = [h for h in self._running if lane is None or h.spec.priority == lane]
        if self.policy == "fifo" and self._running:
            return self._running[0]
        queued = self._queued[:1] if self.policy == "fifo" else self._queued  # FIFO: only the head may start
        for h in list(queued):  # _admit may fail (and remove) a job that can never fit
            if lane is not None and h.spec.priority != lane:
                continue
            m = self._models.get(h.spec.model_id)
            if m is not None and m.running < m.slots and self._admit(h, m, now):
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

    def _maintain(self, now: float, start_loads: bool = True) -> float:
        """Under the lock: drop cancelled queued jobs, start loads (``start_loads``), expire idle models.
        Returns seconds until the next keep-alive expiry (for the wait)."""
        for h in [h for h in self._queued if h.cancelled]:
            self._queued.remove(h)
            self._mem_waits.pop(h, None)
            h._finish("cancelled", error=Cancelled("cancelled before it started"))
        for h in list(self._queued):
            mid = h.spec.model_id
            if mid in self._load_errors:
                self._queued.remove(h)
                h._finish("failed", error=self._load_errors[mid])
        if not any(h.spec.model_id in self._load_errors for h in self._queued):
            self._load_errors.clear()
        waiting = dict.fromkeys(h.spec.model_id for h in self._queued)
        for key in [k for k in self._mem_waits if isinstance(k, str) and k not in waiting]:
            del self._mem_waits[key]  # its jobs went away: a later load starts a fresh wait
        for mid in waiting:
            if start_loads and mid not in self._models and mid not in self._loading:
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
            need = max(int(self.estimate(mid)), self._learned.get(mid, 0))  # a reload plans what was measured
        except BaseException as e:  # unknown model, not installed ...
            self._load_errors[mid] = e
            return
        work = max((h.spec.work_bytes for h in self._queued if h.spec.model_id == mid), default=0)
        err = self._make_room(mid, need + work, what=f"model {mid!r} needs about {_mib(need)}"
                              + (f" (+ {_mib(work)} for its first job)" if work else ""), key=mid, exclude=mid)
        if err is not None:
            self._load_errors[mid] = err
        elif self._mem_waits.get(mid) is None:  # room made
            self._loading[mid] = need
            threading.Thread(target=self._load, args=(mid, need), name=f"edge-load-{mid}", daemon=True).start()

    def _make_room(self, mid: str, need: int, *, what: str, key: Any, exclude: str) -> OutOfMemory | None:
        """Under the lock: make ``need`` bytes fit the budget beside every model but ``exclude``, evicting
        idle models least-recently-used (never ``exclude``, a pinned one or one with work). Returns None when it fits (``key`` not in ``_mem_waits``) or when
        the caller must wait for running jobs (``key`` in ``_mem_waits``, until ``memory_wait`` passes);
        the OutOfMemory to raise when nothing can ever free enough or the wait ran out."""
        others = [m for m in self._models.values() if m.id != exclude]
        fixed = sum(m.footprint for m in others if m.pinned) + sum(b for k, b in self._loading.items() if k != exclude)
        if need + fixed > self.ram_budget:
            self._mem_waits.pop(key, None)
            pinned = [m.id for m in others if m.pinned]
            held = f" beside the pinned {', '.join(pinned)}" if pinned else ""
            return OutOfMemory(f"{what}{held}, but the RAM budget is {_mib(self.ram_budget)}. Raise EDGE_RAM_BUDGET "
                               "(or --ram-budget), use a smaller precision or model, or pick a --profile for this "
                               "device (`edge-run devices` shows the budget and why).", param="model")
        used = sum(m.footprint for m in others) + sum(b for k, b in self._loading.items() if k != exclude)
        idle = sorted((m for m in others if not m.running and not m.pinned and not self._wanted(m.id)),
                      key=lambda m: m.last_used)
        while used + need > self.ram_budget and idle:
            victim = idle.pop(0)
            used -= victim.footprint
            self._evict(victim, reason=f"making room for {mid}")
        if used + need <= self.ram_budget:
            self._mem_waits.pop(key, None)
            return None
        now = time.monotonic()
        since = self._mem_waits.setdefault(key, now)  # wait: a busy model will become idle; never evict one with work
        if now - since > self.memory_wait:
            self._mem_waits.pop(key, None)
            busy = sorted({m.id for m in others if m.running or self._wanted(m.id)})
            return OutOfMemory(f"{what}; {_mib(used)} of the {_mib(self.ram_budget)} RAM budget stayed held by the "
                               f"jobs of {', '.join(busy) or 'other models'} for {self.memory_wait:g} s. Retry "
                               "later, raise EDGE_RAM_BUDGET, or use a smaller precision or model.", param="model")
        return None

    def _admit(self, h: JobHandle, m: LoadedModel, now: float) -> bool:
        """Under the lock: may queued job ``h`` start on loaded model ``m`` as far as RAM goes? Its
        working set beyond what ``m`` already holds must fit (idle models are evicted for it); if running
        jobs hold the RAM it waits; if it can never fit, ``h`` fails with OutOfMemory."""
        if h.spec.work_bytes <= m.work:
            return True
        extra = h.spec.work_bytes - m.work
        err = self._make_room(m.id, m.footprint + extra, key=h, exclude=m.id,
                              what=f"the {h.spec.label or 'job'} job on model {m.id!r} needs {_mib(h.spec.work_bytes)} "
                                   f"of working memory beside the model's {_mib(m.footprint)}")
        if err is not None:
            self._queued.remove(h)
            self._mem_waits.pop(h, None)
            h._finish("failed", error=err)
            self._cv.notify_all()
            return False
        if h in self._mem_waits:
            return False
        m.work = h.spec.work_bytes
        return True

    def _over_budget(self, cause: LoadedModel) -> None:
        """Under the lock: after a measurement grew ``cause``, evict idle models until the total fits again."""
        used = sum(m.footprint for m in self._models.values()) + sum(self._loading.values())
        idle = sorted((m for m in self._models.values() if m is not cause and not m.running and not m.pinned
                       and not self._wanted(m.id)), key=lambda m: m.last_used)
        while used > self.ram_budget and idle:
            victim = idle.pop(0)
            used -= victim.footprint
            self._evict(victim, reason=f"{cause.id} grew to {_mib(cause.footprint)}")
        if used > self.ram_budget:
            log.warning("RAM in use %s is over the budget %s (%s grew to %s while running)", _mib(used),
                        _mib(self.ram_budget), cause.id, _mib(cause.footprint))

    def _evict(self, m: LoadedModel, reason: str) -> None:
        del self._models[m.id]
        self._learned[m.id] = m.learned()
        self.metrics.evictions += 1
        self.metrics.evicted = [*self.metrics.evicted[-99:], (m.id, reason)]
        log.info("unloading %s (%s)", m.id, reason)
        closer = threading.Thread(target=self._close_engine, args=(m,), name=f"edge-close-{m.id}", daemon=True)
        self._closing.add(closer)
        closer.start()

    def _close_engine(self, m: LoadedModel) -> None:
        """An evicted model's engine, closed off the lock (freeing sessions can take a while)."""
        try:
            m.engine.close()
        finally:
            with self._cv:
                self._closing.discard(threading.current_thread())

    def _load(self, mid: str, need: int) -> None:
        cpu.set_lanes(self.policy == "lanes")  # batch-lane sessions get their threads in the batch class
        with self._cv:
            closing = list(self._closing)
        for closer in closing:  # the room a load was evicted for is free, and not freed while it is measured
            closer.join(timeout=30)
        before = rss_bytes(settle=True)  # garbage freed or memory reused during the load would hide its growth
        t0 = time.monotonic()
        try:
            engine = self.loader(mid, self.threads)
        except BaseException as e:
            with self._cv:
                self._loading.pop(mid, None)
                self._load_errors[mid] = e
                self._cv.notify_all()
            return
        measured = max(0, rss_bytes() - before)
        with self._cv:
            self._loading.pop(mid, None)
            now = time.monotonic()
            m = LoadedModel(id=mid, engine=engine, planned=need, loaded_at=now, last_used=now,
                            pinned=mid in self._pins, keep_until=self._expiry(None, now), measured=measured,
                            measured_peak=measured, at_load=measured)
            self._models[mid] = m
            self.metrics.loads += 1
            log.info("loaded %s in %.2f s (measured %s, planned %s)", mid, now - t0, _mib(measured), _mib(need))
            self._cv.notify_all()

    def _expiry(self, keep_alive: float | None, now: float) -> float | None:
        ka = self.keep_alive if keep_alive is None else keep_alive
        return None if ka < 0 else now + ka

    def _run(self, lane: Priority | None) -> None:
        """A worker: steps the jobs of ``lane`` (None = every job) one at a time."""
        if lane is Priority.BATCH:
            cpu.lower_this_thread()  # this thread, and the native threads it starts, yield to normal ones
            cpu.set_lanes(True)
        busy_since: float | None = None
        owed = 0.0  # seconds this (interactive) lane owes a waiting batch job
        while True:
            with self._cv:
                while True:
                    if self._closed:
                        for h in self._queued + self._running:
                            if lane is None or h.spec.priority == lane:
                                self._close_job(h, "cancelled", error=Cancelled("the runtime is shutting down"))
                        self._queued[:] = [h for h in self._queued if not h.done]
                        self._running[:] = [h for h in self._running if not h.done]
                        return
                    now = time.monotonic()
                    # loads start from a normal-class worker only: a load thread inherits the class of the thread
                    # that starts it, and every model's interactive sessions (the SAM decoder's pool, ...) with it
                    wait = self._maintain(now, start_loads=lane is not Priority.BATCH)
                    job = self._pick(now, lane)
                    if job is not None:
                        break
                    busy_since, owed = None, 0.0
                    self._cv.wait(timeout=min(wait, 1.0))
            busy_since = busy_since or time.monotonic()
            dt = self._step(job)
            if lane is Priority.INTERACTIVE and self.batch_share:
                owed = self._give_back(busy_since, dt, owed)

    def _give_back(self, busy_since: float, dt: float, owed: float) -> float:
        """The batch lane's share guarantee: once the interactive lane has been busy for a second while a
        batch job runs, it pauses ``batch_share`` of its step time (in pauses of >= 20 ms)."""
        with self._cv:
            batch_running = any(h.spec.priority == Priority.BATCH for h in self._running)
        if time.monotonic() - busy_since < 1.0 or not batch_running:
            return 0.0
        owed += dt * self.batch_share / (1.0 - self.batch_share)
        if owed < 0.02:
            return owed
        time.sleep(owed)
        self.metrics.share_waits += owed
        return 0.0

    def _set_threads(self, h: JobHandle) -> None:
        """Tell the job's engine how many threads its next step may use (what the CPU can give now)."""
        n = self.cpu_load.threads(self.threads) if self.cpu_load is not None else self.threads
        if n != self.metrics.threads_now:
            if self.metrics.threads_now:
                self.metrics.thread_changes += 1
                log.info("threads per step: %d -> %d (other programs keep %.1f cores busy)", self.metrics.threads_now,
                         n, self.cpu_load.outside if self.cpu_load else 0.0)
            self.metrics.threads_now = n
        setter = getattr(h._engine, "set_threads", None)
        if setter is not None:
            setter(n)

    def _step(self, h: JobHandle) -> float:
        """Run one step of ``h`` in this worker thread (engines release the GIL); returns its seconds."""
        if h.cancelled:
            with self._cv:
                self._close_job(h, "cancelled", error=Cancelled("cancelled"))
            return 0.0
        self._set_threads(h)
        t0 = time.monotonic()
        rss0 = rss_bytes()
        try:
            if h._gen is None:
                h._gen = h.spec.work(h._engine)
            step = next(h._gen)
        except StopIteration as stop:
            with self._cv:
                self._account(h, rss0)
                self._close_job(h, "done", result=stop.value)
            return time.monotonic() - t0
        except BaseException as e:
            if not isinstance(e, EdgeError):
                log.exception("job %s (%s) failed", h.id, h.spec.label)
            with self._cv:
                self._account(h, rss0)
                self._close_job(h, "failed", error=e)
            return time.monotonic() - t0
        with self._cv:
            self._account(h, rss0)
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
        return dt

    def _account(self, h: JobHandle, rss_before: int) -> None:
        """Under the lock: charge the process's RSS change over one step of ``h`` to its model (a lazily
        made session, an arena grown, mmapped pages touched). Steps of the other lane running meanwhile
        are charged too: the figure errs high, never low."""
        m = self._models.get(h.spec.model_id)
        if m is None:
            return
        before = m.footprint
        m.measured += rss_bytes() - rss_before
        m.measured_peak = max(m.measured_peak, m.measured)
        if m.footprint > before and sum(x.footprint for x in self._models.values()) > self.ram_budget:
            self._over_budget(m)

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
        self._mem_waits.pop(h, None)
        h._engine = None
        h._finish(state, result=result, error=error)
        self._cv.notify_all()
