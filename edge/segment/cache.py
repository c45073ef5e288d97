"""The image-embedding cache: LRU keyed by image content hash, bounded in bytes.

A second click on the same image finds its embedding here and runs only the mask decoder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np


@dataclass
class Embedding:
    """An encoded image: what the decoder needs besides the prompts."""

    image_id: str
    features: np.ndarray            # 1 x 256 x 64 x 64 float32
    size: tuple[int, int]           # (H, W) of the working image
    original_size: tuple[int, int]  # (H, W) as given
    scale: float                    # size / original_size

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes)


class EmbeddingCache:
    """Thread-safe LRU of :class:`Embedding` by image id, evicting least-recently-used entries once
    the total exceeds ``max_bytes``. ``hits``/``misses`` count lookups."""

    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, image_id: str) -> Embedding | None:
        with self._lock:
            emb = self._items.get(image_id)
            if emb is None:
                self.misses += 1
                return None
            self._items.move_to_end(image_id)
            self.hits += 1
            return emb

    def __contains__(self, image_id: str) -> bool:
        with self._lock:
            return image_id in self._items

    def put(self, emb: Embedding) -> None:
        with self._lock:
            old = self._items.pop(emb.image_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            if emb.nbytes > self.max_bytes:
                return  # larger than the whole budget: do not cache (and do not flush everything)
            self._items[emb.image_id] = emb
            self._bytes += emb.nbytes
            while self._bytes > self.max_bytes and self._items:
                _, ev = self._items.popitem(last=False)
                self._bytes -= ev.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._items)
