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

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Callable, Generator, Protocol, TypeVar, runtime_checkable

R = TypeVar("R")


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
