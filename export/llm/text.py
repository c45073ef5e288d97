"""The public-domain text the chat exports measure perplexity on (and train ``--random-init``
tokenizers on): the opening chapter of Jane Austen's *Pride and Prejudice* (1813)."""

from __future__ import annotations

from pathlib import Path

TEXT_PATH = Path(__file__).with_name("data") / "pride_and_prejudice_ch1.txt"


def sample_text() -> str:
    return TEXT_PATH.read_text(encoding="utf-8")
