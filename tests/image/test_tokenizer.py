"""The CLIP tokenizer written by the recipe (tokenizers library) vs open_clip's reference BPE."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edge.image.tokenizer import ClipTokenizer

PROMPTS = ["a lighthouse at dusk", "A PHOTO of 3 cats, 4k!!  ultra-detailed", "portrait, (oil painting:1.2), café",
           "rock'n'roll don't stop", "日本の風景 mountains", "hello\tworld\nnew line", "x"]


@pytest.fixture(scope="module")
def tok(tokenizer_dir):
    return ClipTokenizer(tokenizer_dir / "tokenizer.json")


@pytest.fixture(scope="module")
def reference():
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


@pytest.mark.parametrize("prompt", PROMPTS)
def test_ids_match_open_clip(tok, reference, prompt):
    ids, truncated = tok.encode([prompt])
    body = reference.encode(prompt)
    sot, eot = reference.sot_token_id, reference.eot_token_id
    want = [sot] + body + [eot]
    assert ids.shape == (1, 77) and ids.dtype == np.int64
    assert ids[0, :len(want)].tolist() == want
    assert (ids[0, len(want):] == eot).all()  # padded with <|endoftext|> like SD's tokenizer
    assert truncated == []


def test_long_prompt_is_truncated_with_a_warning(tok, reference, caplog):
    prompt = "a very long prompt about " + " ".join(f"word{i}" for i in range(100))
    with caplog.at_level(logging.WARNING, logger="edge.image"):
        ids, truncated = tok.encode([prompt])
    n = len(reference.encode(prompt)) + 2
    assert truncated == [n] and n > 77
    assert "at most 77" in caplog.text
    want = [reference.sot_token_id] + reference.encode(prompt)[:75] + [reference.eot_token_id]
    assert ids[0].tolist() == want
