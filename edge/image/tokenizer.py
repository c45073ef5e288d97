"""CLIP prompt tokenizer for the text encoder, over the `tokenizers` library (tokenizer.json written
by the export recipe). Pads with <|endoftext|> to 77 tokens like Stable Diffusion's tokenizer and
truncates longer prompts with a warning, like diffusers."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("edge.image")

MAX_LENGTH = 77


class ClipTokenizer:
    """``encode(prompts) -> int64 array (batch, 77)``; ``truncated`` lists the prompts that were cut."""

    def __init__(self, path: str | Path, max_length: int = MAX_LENGTH):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self._full = Tokenizer.from_file(str(path))  # no truncation / padding: for counting
        self._full.no_truncation()
        self._full.no_padding()
        self.max_length = max_length
        pad_id = self.tok.token_to_id("<|endoftext|>")
        if pad_id is None:
            raise ValueError(f"{path} is not a CLIP tokenizer (no <|endoftext|> token).")
        self.tok.enable_truncation(max_length=max_length)
        self.tok.enable_padding(length=max_length, pad_id=pad_id, pad_token="<|endoftext|>")

    def count(self, prompt: str) -> int:
        """Number of tokens of ``prompt`` including the start and end tokens, before truncation."""
        return len(self._full.encode(prompt).ids)

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Token ids (batch, max_length) int64, and the token counts of prompts that were truncated."""
        encs = self.tok.encode_batch(list(prompts))
        truncated = []
        for p, e in zip(prompts, encs):
            if e.overflowing:
                n = self.count(p)
                truncated.append(n)
                log.warning("prompt has %d tokens; CLIP reads at most %d, the rest is ignored: %r", n,
                            self.max_length, self._full.decode(self._full.encode(p).ids[self.max_length - 1:])[:80])
        return np.asarray([e.ids for e in encs], dtype=np.int64), truncated
