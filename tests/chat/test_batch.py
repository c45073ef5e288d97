"""edge/chat/batch.py and edge/chat/answer.py: the running chats of a GGUF model decode in one batch, with
the real SmolLM2 through llama.cpp; a chat's logits and greedy answer do not depend on its batch neighbours."""

from __future__ import annotations

import numpy as np
import pytest

from edge.chat.answer import AnswerText, incomplete_utf8_tail
from edge.chat.request import ChatRequest
from edge.chat.sampling import Sampling

from support import CHAT_MODEL, THREADS, drain

QUESTIONS = ["Name three fruits.", "Write one sentence about the sea.", "Why is the sky blue?"]
GREEDY = Sampling(temperature=0.0, top_p=1.0, top_k=0, min_p=0.0, repeat_penalty=1.0)


def ask(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


@pytest.fixture(scope="module")
def engine(edge_home):
    from edge.chat.engine import LlamaChatEngine
    from edge.config import Settings
    from edge.registry import Catalog, Store

    model = Store(Settings.from_env(env={}, home=edge_home)).installed(Catalog(None).get(CHAT_MODEL))
    eng = LlamaChatEngine.load(model, threads=THREADS, slots=3, n_ctx=1024)
    yield eng
    eng.close()


def request(q: str, n: int = 40) -> ChatRequest:
    return ChatRequest(messages=ask(q), temperature=0, max_tokens=n).check()


def test_concurrent_chats_share_each_decode_and_answer_as_when_alone(engine):
    """Three chats stepped in turn (as the scheduler's lane does) give their solo greedy answers, and run about
    one llama_decode per round of their three token steps rather than one per token."""
    solo = {}
    for q in QUESTIONS:
        before = engine.decoder.decodes
        solo[q] = drain(engine.chat_steps(request(q)))[1]
        sampled = solo[q].completion_tokens + (solo[q].finish_reason == "stop")  # an end token is sampled too
        assert engine.decoder.decodes - before == sampled  # alone: one decode per sampled token
    gens = {q: engine.chat_steps(request(q)) for q in QUESTIONS}
    results, before = {}, engine.decoder.decodes
    while gens:
        for q in list(gens):
            try:
                next(gens[q])
            except StopIteration as stop:
                results[q] = stop.value
                del gens[q]
    decodes = engine.decoder.decodes - before
    assert {q: r.text for q, r in results.items()} == {q: r.text for q, r in solo.items()}
    assert {q: r.completion_tokens for q, r in results.items()} == {q: r.completion_tokens for q, r in solo.items()}
    # each chat's first step starts it with a decode of its own (its prompt beside the others' tokens), then one
    # decode serves a whole round
    longest = max(r.completion_tokens + (r.finish_reason == "stop") for r in solo.values())
    assert decodes <= longest + len(QUESTIONS) - 1 < sum(r.completion_tokens for r in solo.values()), decodes


def test_a_chats_logits_are_bit_identical_beside_other_chats_and_a_prompt_chunk(engine):
    """The property batched decoding rests on: chat A's logits at every token are the same numbers whether A
    decodes alone, beside chat B's tokens, or beside chat C's prompt pieces (C's prompt is 3 pieces long)."""
    dec, model = engine.decoder, engine.model
    a = engine.tokenize_prompt(ask(QUESTIONS[0]))[0]
    b = engine.tokenize_prompt(ask(QUESTIONS[1]))[0]
    c = engine.tokenize_prompt(ask("The cat sat on the mat. " * 90 + "Where did the cat sit?"))[0]
    assert len(c) > 600

    def run_a(neighbours: list[list[int]], start_at: int) -> list[np.ndarray]:
        seq_a = dec.begin(0, a, 0, sampling=GREEDY, seed=0, grammar=None, limit=12)
        others = []
        logits = []
        try:
            while not seq_a.finished:
                if len(logits) == start_at and not others:
                    others = [dec.begin(i + 1, t, 0, sampling=GREEDY, seed=0, grammar=None, limit=30)
                              for i, t in enumerate(neighbours)]
                dec.step(THREADS)
                row = dec.last_logits(seq_a)
                if row is not None:
                    logits.append(row)
            return logits
        finally:
            for s in [seq_a, *others]:
                dec.end(s)

    alone = run_a([], 0)
    beside = run_a([b, c], 3)  # B and C start after A's third token: C's pieces share A's decodes
    assert len(alone) == len(beside) == 12
    for i, (x, y) in enumerate(zip(alone, beside)):
        assert np.array_equal(x, y), f"token {i}: max |diff| {np.abs(x - y).max()}"
    assert model.n_vocab() == alone[0].shape[0]


def test_answer_text_cuts_at_stop_strings_and_never_splits_a_character():
    stream = AnswerText(["END", "\n\n"])
    pieces = [stream.add(p) for p in [b"caf", b"\xc3", b"\xa9 E", b"N", b"D tail"]]
    assert pieces == ["caf", "", "\u00e9 ", "", ""] and stream.stopped
    assert stream.finish() == "" and stream.text == "caf\u00e9 "
    held = AnswerText(["<|im_end|>"])
    got = [held.add(p) for p in [b"one <", b"|im", b" two"]]
    assert got == ["one ", "", "<|im two"] and not held.stopped
    assert "".join(got) + held.finish() == held.text == "one <|im two"
    assert incomplete_utf8_tail(b"a\xe2\x82") == 2 and incomplete_utf8_tail(b"a\xe2\x82\xac") == 0
    assert incomplete_utf8_tail(b"\xf0\x9f\x98") == 3 and incomplete_utf8_tail(b"abc") == 0


def test_attention_settings_follow_the_models_head_size(engine, chat_model_path):
    """Flash attention with a q8_0 cache where K and V heads are whole q8_0 blocks (SmolLM2: 64), else the f16
    cache without it (llama.cpp refuses a q8_0 cache for a head of 16, as the distilled students have; the KD
    student test chats through that path); the KV estimate follows the cache type."""
    from edge.chat.batch import F16, KV_TYPE, Attention, KvShape, gguf_metadata, kv_cache_bytes

    assert Attention.for_heads(64, 64) == Attention(True, KV_TYPE)
    assert Attention.for_heads(16, 16) == Attention(False, F16) == Attention.for_heads(64, 48)
    shape = KvShape.from_metadata(gguf_metadata(str(chat_model_path)))
    assert (shape.k_dim, shape.v_dim) == (64, 64) and engine.decoder.attention == Attention(True, KV_TYPE)
    f16 = shape.layers * shape.kv_heads * (shape.k_dim + shape.v_dim) * 2 * 1000
    assert kv_cache_bytes(str(chat_model_path), 1000) == int(f16 * 34 / 64)
