"""edge/chat/slots.py: the slot pool's prefix choice and the context-length check, on the pool itself and
through the real llama.cpp engine with SmolLM2 (the ONNX engine's share is in tests/export/llm/test_onnx.py)."""

from __future__ import annotations

import pytest

from edge.chat.request import ChatRequest
from edge.chat.slots import SlotPool, check_context
from edge.errors import BadRequest, ContextTooLong, EdgeError

from support import CHAT_MODEL, THREADS, drain


def ask(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def test_pool_lends_the_free_slot_with_the_longest_common_prefix():
    pool = SlotPool(["ctx0", "ctx1", "ctx2"])
    pool.slots[0].tokens, pool.slots[1].tokens, pool.slots[2].tokens = [1, 2, 3], [1, 2, 3, 4, 5], [1, 2, 3, 4]
    with pool.take([1, 2, 3, 4, 5, 6]) as best:
        assert best.index == 1 and best.state == "ctx1" and best.busy
        with pool.take([1, 2, 3, 4, 5, 6]) as second:  # the best one is busy: the next longest prefix
            assert second.index == 2
    assert not any(s.busy for s in pool.slots)
    with pool.take([7, 8]) as first:  # no slot shares a token: the lowest index
        assert first.index == 0
    for _ in range(3):
        pool.acquire([1])
    with pytest.raises(EdgeError, match="no free chat slot"):
        pool.acquire([1])
    # what a slot can keep leaves the engine's last tokens to evaluate
    assert pool.slots[1].reusable([1, 2, 3, 4, 5, 6], keep=2) == 4
    assert pool.slots[1].reusable([1, 2, 3], keep=1) == 2 and pool.slots[1].reusable([9], keep=2) == 0
    pool.close()
    assert [(s.state, s.tokens) for s in pool.slots] == [(None, [])] * 3


def test_check_context_names_the_numbers_and_the_fix():
    assert check_context(10, 256) == 246 and check_context(10, 256, 5) == 5
    with pytest.raises(ContextTooLong) as err:
        check_context(300, 256)
    assert err.value.message == ("the prompt is 300 tokens but the context window is 256. Shorten the "
                                 "conversation (/reset) or load with a larger context (--ctx 1024).")
    with pytest.raises(ContextTooLong, match="is 9000 tokens but the context window is 4096. .*made for at most 8192"):
        check_context(9000, 4096, model_ctx=8192)  # no --ctx helps past what the model takes
    with pytest.raises(BadRequest, match="empty"):
        check_context(0, 256)


@pytest.fixture(scope="module")
def llama_engine(edge_home):
    from edge.chat.engine import LlamaChatEngine
    from edge.config import Settings
    from edge.registry import Catalog, Store

    model = Store(Settings.from_env(env={}, home=edge_home)).installed(Catalog(None).get(CHAT_MODEL))
    eng = LlamaChatEngine.load(model, threads=THREADS, slots=2, n_ctx=512)
    yield eng
    eng.close()


def test_llama_slots_follow_their_conversations(llama_engine):
    """Two conversations on two slots: each next turn goes to the slot holding its own prompt."""
    eng = llama_engine
    # longer than a prefill chunk, so a turn on the wrong slot would need a prefill step
    a = ask("The cat sat on the mat. " * 40 + "Name a red fruit.")
    b = ask("A small bird flew over the sea. " * 40 + "Which bird is blue?")
    gen_a = eng.chat_steps(ChatRequest(messages=a, temperature=0, max_tokens=4))
    assert next(gen_a).kind == "prefill"  # conversation A holds a slot while B runs
    held = [s.index for s in eng.pool.slots if s.busy]
    steps, res_b = drain(eng.chat_steps(ChatRequest(messages=b, temperature=0, max_tokens=4)))
    assert [s.kind for s in steps].count("prefill") >= 1
    _, res_a = drain(gen_a)
    prompt_a, prompt_b = eng.tokenize_prompt(a)[0], eng.tokenize_prompt(b)[0]
    slot_a = next(s for s in eng.pool.slots if s.tokens == prompt_a)
    slot_b = next(s for s in eng.pool.slots if s.tokens == prompt_b)
    assert held == [slot_a.index] and slot_a is not slot_b
    a2 = eng.tokenize_prompt([*a, {"role": "assistant", "content": res_a.text}, *ask("And a yellow one?")])[0]
    b2 = eng.tokenize_prompt([*b, {"role": "assistant", "content": res_b.text}, *ask("And a red one?")])[0]
    with eng.pool.take(b2) as slot:
        assert slot is slot_b
    with eng.pool.take(a2) as slot:
        assert slot is slot_a
    # running B's next turn needs no prefill chunk (only the new turn is evaluated) and keeps A's cache
    steps, _ = drain(eng.chat_steps(ChatRequest(
        messages=[*b, {"role": "assistant", "content": res_b.text}, *ask("And a red one?")],
        temperature=0, max_tokens=4)))
    assert not [s for s in steps if s.kind == "prefill"]
    assert slot_b.tokens == b2 and slot_a.tokens == prompt_a


def test_llama_prompt_past_the_context_names_the_numbers_and_the_fix(llama_engine):
    eng = llama_engine
    msgs = ask("word " * 600)
    n = len(eng.tokenize_prompt(msgs)[0])
    assert 512 <= n < 768
    with pytest.raises(ContextTooLong) as err:
        drain(eng.chat_steps(ChatRequest(messages=msgs)))
    assert err.value.param == "messages"
    assert err.value.message == (f"the prompt is {n} tokens but the context window is 512. Shorten the "
                                 "conversation (/reset) or load with a larger context (--ctx 1024).")
    # past the window the model was trained for, a larger --ctx is not the fix
    train = eng.n_ctx_train
    with pytest.raises(ContextTooLong, match=f"made for at most {train} tokens"):
        drain(eng.chat_steps(ChatRequest(messages=ask("word " * (train + 10)))))
    assert not any(s.busy for s in eng.pool.slots)
