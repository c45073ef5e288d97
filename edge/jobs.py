"""The contract between engines and the shared scheduler.

A unit of work is a *step generator*: a generator function that does one small piece of compute
(a prefill chunk, one decoded token, one UNet step, one encoder call ...), then ``yield``s a
:class:`Step` describing it, and finally ``return``s its result. The scheduler calls ``next()`` on it
from its worker thread; between two steps it may run other jobs' steps, cancel (``gen.close()``,
so ``finally:`` blocks in engines run), or report progress. Engines never sleep or block between
steps and know nothing of HTTP or the CLI.

An engine is a class with::

    @classmethod
    def load(cls, model: "edge.registry.InstalledModel", *, threads: int, device: str,
             ram_budget: int) -> Engine     # chat engines get slots= and n_ctx= instead of ram_budget
    def close(self) -> None            # release native handles (llama contexts, ORT sessions) now
    slots: int                         # how many jobs may use it at once (default 1)

registered by task name in :data:`edge.engines.ENGINE_PATHS`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, Generator, Generic, Iterator, Protocol, TypeVar, runtime_checkable

from edge.errors import Cancelled

R = TypeVar("R")
log = logging.getLogger("edge.jobs")


class Priority(IntEnum):
    """Lower runs first. Interactive: chat tokens, segmentation prompt decodes. Batch: image steps,
    image-encoder calls, long generations a caller marks as batch."""

    INTERACTIVE = 0
    BATCH = 1


@dataclass
class Step:
    """What a job yields after each piece of work.

    kind:  short name of the work just done ("prefill", "token", "text_encode", "unet", "decode",
           "image_encode", "mask_decode" ...); used for per-kind latency metrics.
    index: 1-based index of this step among ``total`` (0 when unknown).
    data:  payload for the caller (a chat token's text, a progress preview ...).
    """

    kind: str
    index: int = 0
    total: int = 0
    data: Any = None
    tokens: int = 0  # tokens produced by this step (chat), for tokens/s metrics


StepGen = Generator[Step, None, R]


@runtime_checkable
class Engine(Protocol):
    """A loaded model that step generators run against."""

    slots: int

    def close(self) -> None: ...


Work = Callable[[Any], StepGen]
"""A function that takes the loaded engine and returns a step generator."""


@dataclass
class JobSpec:
    """What a front door hands to the scheduler."""

    model_id: str
    work: Work
    priority: Priority = Priority.INTERACTIVE
    keep_alive: float | None = None  # seconds to keep the model loaded after this job; None = default
    label: str = ""
    meta: dict = field(default_factory=dict)
    work_bytes: int = 0
    """RAM the job's largest step needs beyond its model's resident footprint (an image decode's
    activations): the scheduler makes room for it before the job starts (edge/scheduler.py)."""


class Outcome(Generic[R]):
    """What every job handle shares: listeners woken after each step and at the end, and the result (or
    the error) once done. ``what`` names the handle in timeout messages."""

    what = "job"

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._listeners_lock = threading.Lock()
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def add_listener(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` after each new step and once the job is done (at once if it already is), from
        the scheduler's thread: an asyncio caller wakes its loop with it instead of holding a thread
        blocked in events() / result(). Read what happened with take_events() and result()."""
        with self._listeners_lock:
            self._listeners.append(fn)
        if self.done:
            fn()

    def result(self, timeout: float | None = None) -> R:
        """The return value; raises the error that ended it (Cancelled, BadRequest ...)."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.what} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def _notify(self) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for fn in listeners:
            try:
                fn()
            except Exception:  # a listener must never break the scheduler
                log.exception("%s listener failed", self.what)


Stage = Generator[JobSpec, Any, R]
"""A chain of jobs as a generator: it yields the JobSpec of the next job, gets that job's result sent
back, and returns the chain's result (see :class:`JobChain`)."""


class JobChain(Outcome[R]):
    """One handle over jobs run one after another, each with its own priority: ``stages`` yields the
    next job's JobSpec and receives its result (a job's error ends the chain with that error).

    It has a JobHandle's interface (``events``, ``take_events``, ``add_listener``, ``result``,
    ``cancel``, ``done``), so a front door awaits a chain like a single job. The next job is submitted
    from the scheduler's thread as the previous one ends (``submit`` must not block: the scheduler's
    own ``submit`` queues or refuses with Busy at once)."""

    def __init__(self, submit: Callable[[JobSpec], Any], stages: Stage[R], *, first: Any = None,
                 model_id: str = ""):
        """``first``: the handle of the chain's first job when the caller submitted it itself (e.g.
        through Runtime.submit's checks); otherwise the chain submits what ``stages`` yields first."""
        super().__init__()
        self.what = "job chain"
        self.model_id = model_id
        self._submit = submit
        self._stages = stages
        self._lock = threading.RLock()
        self._events: list[Step] = []
        self._cancelled = False
        self.current: Any = None  # the handle of the job running now
        if first is None:
            self._advance(lambda: next(self._stages))
        else:
            self._follow(first)

    # -- caller side (JobHandle's interface) ----------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Cancel the running job; no later job of the chain starts."""
        with self._lock:
            self._cancelled = True
            current = self.current
        if current is not None:
            current.cancel()

    def take_events(self) -> tuple[list[Step], bool]:
        """The steps that arrived since the last call (never blocks) and whether the chain has ended."""
        with self._lock:
            out, self._events = self._events, []
            return out, self.done

    def events(self, timeout: float | None = None) -> Iterator[Step]:
        """Steps as they happen, across the chain's jobs; ends when the chain ends."""
        wake = threading.Event()
        self.add_listener(wake.set)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            steps, ended = self.take_events()
            yield from steps
            if ended:
                return
            if not steps:
                if not wake.wait(0.25) and deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job chain produced no step for {timeout} s")
                wake.clear()

    # -- driving the stages (the scheduler's thread, as each job ends) --------------------
    def _follow(self, handle: Any) -> None:
        with self._lock:
            self.current = handle
        if self._cancelled:
            handle.cancel()
        handle.add_listener(lambda: self._on_progress(handle))

    def _on_progress(self, handle: Any) -> None:
        steps, ended = handle.take_events()
        with self._lock:
            if handle is not self.current or self.done:
                return
            self._events.extend(steps)
            if ended:
                self.current = None
        if not ended:
            self._notify()
            return
        try:
            value = handle.result(timeout=0)
        except BaseException as e:  # the job's error (Cancelled included) ends the chain
            self._finish(error=e)
            return
        self._advance(lambda: self._stages.send(value))

    def _advance(self, step: Callable[[], JobSpec]) -> None:
        try:
            spec = step()
            if self._cancelled:
                raise Cancelled("cancelled")
            handle = self._submit(spec)
        except StopIteration as stop:
            self._finish(result=stop.value)
            return
        except BaseException as e:
            self._stages.close()
            self._finish(error=e)
            return
        self._follow(handle)

    def _finish(self, result: Any = None, error: BaseException | None = None) -> None:
        with self._lock:
            self._result, self._error = result, error
            self._done.set()
        self._notify()
