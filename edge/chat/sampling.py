"""Sampling values: a request's, the model's recommended ones (GGUF ``general.sampling.*``), the defaults.

llama.cpp (since 2025) reads a model's recommended sampling from the GGUF keys ``general.sampling.temp``,
``top_k``, ``top_p``, ``min_p`` and ``penalty_repeat`` (names as in the ``gguf`` package's
``Keys.General.SAMPLING_*``); edge-run does the same for every field a request leaves unset. The other
``general.sampling.*`` keys (sequence, xtc, mirostat, penalty_last_n) have no edge-run field and are ignored.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

log = logging.getLogger("edge.chat")

TEMPERATURE = (0.0, 2.0)
TOP_P = (0.0, 1.0)
MIN_P = (0.0, 1.0)
TOP_K = (0, 1_000_000)                # 0 = off; llama.cpp takes an int32
REPEAT_PENALTY = (0.1, 10.0)          # 1.0 = off
"""Accepted ranges (requests and GGUF values alike; edge.chat.request re-exports them for the server's bodies)."""

GGUF_KEYS = {"temperature": "general.sampling.temp", "top_p": "general.sampling.top_p",
             "top_k": "general.sampling.top_k", "min_p": "general.sampling.min_p",
             "repeat_penalty": "general.sampling.penalty_repeat"}
"""Sampling field -> the GGUF metadata key llama.cpp reads it from."""


@dataclass(frozen=True)
class Sampling:
    """Sampler settings; a None field is unset (the next source in :meth:`merge` decides)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None

    @staticmethod
    def merge(*sources: "Sampling | None") -> "Sampling":
        """Each field from the first source that sets it, else from :data:`DEFAULTS`."""
        values = {}
        for f in fields(Sampling):
            chosen = next((getattr(s, f.name) for s in sources if s is not None and getattr(s, f.name) is not None),
                          getattr(DEFAULTS, f.name))
            values[f.name] = chosen
        return Sampling(**values)

    @staticmethod
    def from_gguf(metadata: Mapping[str, Any], *, source: str = "model") -> "Sampling":
        """The recommended sampling a GGUF's metadata carries (llama-cpp-python gives its values as strings).
        A value that is not a finite number in edge-run's accepted range is ignored, with a warning."""
        ranges = {"temperature": TEMPERATURE, "top_p": TOP_P, "top_k": TOP_K, "min_p": MIN_P,
                  "repeat_penalty": REPEAT_PENALTY}
        found: dict[str, float | int] = {}
        for name, key in GGUF_KEYS.items():
            raw = metadata.get(key)
            if raw is None:
                continue
            try:
                value = float(raw)
            except (TypeError, ValueError):
                value = math.nan
            lo, hi = ranges[name]
            if not (math.isfinite(value) and lo <= value <= hi) or (name == "top_k" and value != int(value)):
                log.warning("%s: ignoring %s = %r (not a number in [%s, %s])", source, key, raw, lo, hi)
                continue
            found[name] = int(value) if name == "top_k" else value
        return replace(Sampling(), **found)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULTS = Sampling(temperature=0.8, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0)
"""llama-cpp-python's create_chat_completion defaults (also the server's before models carried their own)."""
