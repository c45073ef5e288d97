"""Chat slots shared by both chat engines (llama.cpp and ONNX).

A loaded chat model keeps a few KV caches, its *slots*. Each slot remembers the tokens its cache
holds, and a new job takes the free slot whose tokens share the longest prefix with its prompt, so a
multi-turn chat evaluates only what is new. What a slot's ``state`` is belongs to the engine (a
llama.cpp context, or the ONNX graph's past key/values); what a cached token means (prompt only, or
prompt and answer) is the engine's choice too.

The engines also share the prefill chunk size (one scheduler step per chunk) and the one check only
an engine can make: the tokenized prompt against its context window (:func:`check_context`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from edge.errors import BadRequest, ContextTooLong, EdgeError

PREFILL_CHUNK = 256
"""Prompt tokens evaluated per scheduler step: a step between chunks lets other work in."""

MAX_CTX = 131072
"""The largest context window edge-run loads (the range of ``EDGE_CTX`` / ``--ctx``)."""

S = TypeVar("S")


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class Slot(Generic[S]):
    """One KV cache: the engine's ``state`` and the ``tokens`` it holds that a later job may reuse."""

    index: int
    state: S | None
    tokens: list[int] = field(default_factory=list)
    busy: bool = False

    def reusable(self, tokens: Sequence[int], *, keep: int) -> int:
        """Tokens of ``tokens`` this slot's cache can keep, leaving at least the last ``keep`` to evaluate
        (a job needs fresh logits, and llama.cpp's need two tokens evaluated together to be the same)."""
        return max(0, min(common_prefix(self.tokens, tokens), len(tokens) - keep))


class SlotPool(Generic[S]):
    """The slots of one loaded chat model; :meth:`take` lends the best free one for a job."""

    def __init__(self, states: Iterable[S | None]):
        self.slots: list[Slot[S]] = [Slot(i, s) for i, s in enumerate(states)]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.slots)

    def acquire(self, tokens: Sequence[int]) -> Slot[S]:
        """Mark busy and return the free slot whose tokens share the longest prefix with ``tokens``
        (the lowest index among equals). The scheduler never runs more jobs than slots."""
        with self._lock:
            free = [s for s in self.slots if not s.busy]
            if not free:
                raise EdgeError("no free chat slot (scheduler invariant broken)")
            best = max(free, key=lambda s: common_prefix(s.tokens, tokens))
            best.busy = True
            return best

    def release(self, slot: Slot[S]) -> None:
        """Give ``slot`` back; its cache and tokens stay for the next job."""
        with self._lock:
            slot.busy = False

    @contextmanager
    def take(self, tokens: Sequence[int]) -> Iterator[Slot[S]]:
        """``acquire(tokens)`` for the length of a ``with`` block, released however the block ends."""
        slot = self.acquire(tokens)
        try:
            yield slot
        finally:
            self.release(slot)

    def close(self, free: Callable[[S], None] | None = None) -> None:
        """Free every slot's state now (``free(state)`` for native handles) and forget its tokens."""
        with self._lock:
            for slot in self.slots:
                if slot.state is not None and free is not None:
                    free(slot.state)
                slot.state, slot.tokens = None, []


def check_context(n_prompt: int, n_ctx: int, max_tokens: int | None = None, *, model_ctx: int = MAX_CTX) -> int:
    """Tokens left for the answer after an ``n_prompt``-token prompt in an ``n_ctx`` window, at most
    ``max_tokens``. Raises ContextTooLong naming both numbers and the fix when the prompt does not fit
    (``model_ctx``: the largest window this model can be loaded with), BadRequest when it is empty."""
    if n_prompt < 1:
        raise BadRequest("the prompt is empty after tokenizing; send some text.", param="messages")
    if n_prompt >= n_ctx:
        most = min(model_ctx, MAX_CTX)
        larger = min(1 << (n_prompt + 256).bit_length(), most)
        fix = (f"Shorten the conversation (/reset) or load with a larger context (--ctx {larger})."
               if larger > n_prompt else
               f"Shorten the conversation (/reset): this model is made for at most {most} tokens.")
        raise ContextTooLong(f"the prompt is {n_prompt} tokens but the context window is {n_ctx}. {fix}",
                             param="messages")
    # never past the window: llama.cpp's decode fails once the KV cache is full
    left = n_ctx - n_prompt
    return left if max_tokens is None else min(max_tokens, left)
