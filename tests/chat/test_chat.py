"""The chat engine and Runtime.chat with the real SmolLM2 GGUF, checked against raw llama-cpp-python."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edge.errors import BadRequest, Cancelled, ContextTooLong

from support import CHAT_MODEL, THREADS, drain

FACTS = [  # questions this 135M model answers right when greedy
    ("What is the capital of France? Answer in one word.", "paris"),
    ("What is the largest ocean on Earth?", "pacific"),
    ("How many legs does a dog have?", "four"),
]


def ask(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


@pytest.mark.parametrize("question, word", FACTS)
def test_greedy_factual_answers_contain_the_right_word(runtime, question, word):
    res = runtime.chat(ask(question), temperature=0, max_tokens=40)
    assert word in res.text.lower(), res.text
    assert res.prompt_tokens > 5 and 0 < res.completion_tokens <= 40
    assert res.usage()["total_tokens"] == res.prompt_tokens + res.completion_tokens


def test_greedy_text_equals_raw_llama_cpp_python(runtime, chat_model_path):
    from edge.chat.engine import open_llama  # llama_cpp.Llama, minus the AMX path that crashes on AMX CPUs

    from edge.chat.batch import llama_kwargs

    raw = open_llama(model_path=str(chat_model_path), n_ctx=4096, n_threads=THREADS, n_threads_batch=THREADS,
                     **llama_kwargs(str(chat_model_path)), verbose=False)
    try:
        for q in ["Name three fruits.", "Write one sentence about the sea.", "What is 2 + 2?"]:
            want = raw.create_chat_completion(ask(q), temperature=0, max_tokens=48)
            got = runtime.chat(ask(q), temperature=0, max_tokens=48)
            assert got.text == want["choices"][0]["message"]["content"], q
            assert got.completion_tokens == want["usage"]["completion_tokens"]
            assert got.prompt_tokens == want["usage"]["prompt_tokens"]
    finally:
        raw.close()


def test_streaming_and_non_streaming_give_the_same_text(runtime):
    q = ask("Tell me about the moon in two sentences.")
    whole = runtime.chat(q, temperature=0, max_tokens=60).text
    pieces = list(runtime.chat(q, temperature=0, max_tokens=60, stream=True))
    assert len(pieces) > 5 and "".join(pieces) == whole


def test_cancellation_stops_within_one_token(runtime):
    h = runtime.chat_job(ask("Write a very long story about a dragon who learns to cook."), temperature=0,
                         max_tokens=1000, min_p=0.0)
    for step in h.events():
        if step.kind == "token" and h.steps >= 5:
            break
    assert not h.done, "the answer ended before the test could cancel it"
    steps_at_cancel = h.steps
    h.cancel()
    with pytest.raises(Cancelled):
        h.result(5)
    assert h.steps - steps_at_cancel <= 1, f"{h.steps - steps_at_cancel} steps ran after cancel()"


def test_json_schema_constrains_the_answer(runtime):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
              "required": ["city", "country"]}
    res = runtime.chat(ask("What is the capital of France? Reply in JSON."), temperature=0, max_tokens=60, json_schema=schema)
    data = json.loads(res.text)
    jsonschema.validate(data, schema)


def test_second_turn_reuses_the_cached_prefix(runtime):
    long_sys = {"role": "system", "content": "You are a helpful assistant. " * 120}
    first = runtime.chat_job([long_sys, *ask("Hi!")], temperature=0, max_tokens=8)
    prefills_first = sum(1 for s in first.events() if s.kind == "prefill")
    reply = first.result().text
    second = runtime.chat_job([long_sys, *ask("Hi!"), {"role": "assistant", "content": reply}, *ask("Bye!")],
                              temperature=0, max_tokens=8)
    prefills_second = sum(1 for s in second.events() if s.kind == "prefill")
    second.result()
    assert prefills_first >= 2 and prefills_second == 0


@pytest.mark.parametrize("kw, param", [
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
])
def test_invalid_sampling_values_name_the_argument(runtime, kw, param):
    with pytest.raises(BadRequest) as err:
        runtime.chat(ask("hi"), **kw)
    assert err.value.param == param and param in err.value.message


def test_prompt_longer_than_the_context_says_the_numbers(edge_home):
    from edge.api import Runtime

    with Runtime(home=str(edge_home), threads=THREADS, offline=True, ctx=256, chat_slots=1) as rt:
        with pytest.raises(ContextTooLong, match=r"prompt is \d+ tokens but the context window is 256.*--ctx"):
            rt.chat(ask("word " * 400), temperature=0)


def test_unknown_model_for_the_task(runtime):
    with pytest.raises(Exception, match="Did you mean 'smollm2-135m-instruct-q4_1'"):
        runtime.chat(ask("hi"), model="smollm2-135m")


def test_llama_chat_engine_steps_slots_and_close(edge_home):
    """The engine on its own: prefill chunks then token steps, slots reuse their KV prefix, close() frees."""
    from edge.chat.engine import LlamaChatEngine
    from edge.chat.request import ChatRequest
    from edge.chat.slots import PREFILL_CHUNK
    from edge.config import Settings
    from edge.registry import Catalog, Store

    model = Store(Settings.from_env(env={}, home=edge_home)).installed(Catalog(None).get(CHAT_MODEL))
    eng = LlamaChatEngine.load(model, threads=THREADS, slots=2, n_ctx=2048)
    try:
        story = "The cat sat on the mat and looked at the garden. " * (PREFILL_CHUNK // 5)
        msgs = [{"role": "user", "content": story + "\nWhat did the cat sit on?"}]
        steps, result = drain(eng.chat_steps(ChatRequest(messages=msgs, temperature=0, max_tokens=3).check()))
        kinds = [s.kind for s in steps]
        assert kinds[:2] == ["prefill", "prefill"] and set(kinds[2:]) == {"token"}
        assert result.completion_tokens == 3 and result.finish_reason == "length", result
        slots = eng.pool.slots
        assert [s.busy for s in slots] == [False, False] and slots[1].tokens == []  # one job used one slot
    finally:
        eng.close()
    assert [s.state for s in eng.pool.slots] == [None, None]


def test_greedy_answer_does_not_depend_on_what_the_slot_served_before(edge_home):
    """Same prompt -> same greedy text, on a fresh slot or one holding another conversation's cache."""
    from edge.api import Runtime

    q = ask("Why is the rainbow curved? Explain in detail.")
    with Runtime(home=str(edge_home), threads=THREADS, offline=True, chat_slots=1) as rt:
        fresh = rt.chat(q, temperature=0, max_tokens=64).text
        again = rt.chat(q, temperature=0, max_tokens=64).text  # full prompt cached in the slot
        rt.chat(ask("Why is the sky blue?"), temperature=0, max_tokens=16)  # shares the template prefix
        after_other = rt.chat(q, temperature=0, max_tokens=64).text
    assert fresh == again == after_other


def test_llama_cpp_logits_do_not_depend_on_how_the_prompt_is_batched(chat_model_path):
    """The engine reuses any cached prompt prefix and relies on this: the last logits of a 600-token text
    are bit-identical in one batch or split into batches of two or more tokens (a token evaluated alone,
    as decoding does, takes another kernel; the engine never reuses those)."""
    import llama_cpp
    import numpy as np
    from edge.chat.engine import open_llama

    from edge.chat.batch import llama_kwargs

    llm = open_llama(model_path=str(chat_model_path), n_ctx=2048, n_threads=THREADS, n_batch=1024, n_ubatch=1024,
                     **llama_kwargs(str(chat_model_path)), verbose=False)
    text = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(60))
    tokens = llm.tokenize(text.encode(), add_bos=True)[:600]

    def last_logits(cuts: list[int]) -> np.ndarray:
        llm.reset()
        for a, b in zip([0, *cuts], [*cuts, len(tokens)]):
            llm.eval(tokens[a:b])
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits(llm.ctx), shape=(llm.n_vocab(),)).copy()

    whole = last_logits([])
    # pieces of two tokens at the start, in the middle and up to the end (every two-token piece of the text
    # took 300 evals and most of this file's time; these runs cover the same kernel path at each stage)
    pairs = list(range(2, 40, 2)) + [300] + list(range(302, 340, 2)) + [560] + list(range(562, 598, 2))
    for cuts in ([100, 356], [256, 512], [37], pairs):
        assert np.array_equal(whole, last_logits(cuts)), cuts[:4]


def test_a_completion_longer_than_the_context_stops_at_the_window(edge_home):
    """max_tokens past the context window ends with finish_reason "length" at the window, not with
    llama.cpp's "failed to find a memory slot" (a 500 schemathesis found on /v1/completions)."""
    from edge.api import Runtime
    from edge.chat.request import ChatRequest
    from edge.jobs import JobSpec

    with Runtime(home=str(edge_home), threads=THREADS, offline=True, ctx=256, chat_slots=1) as rt:
        req = ChatRequest(messages=[{"role": "user", "content": "count"}], max_tokens=100_000, temperature=0,
                          min_p=0).check()
        prompt = "1, 2, 3, 4, 5, 6, 7, 8,"
        res = rt.submit(JobSpec(model_id=CHAT_MODEL, work=lambda engine: engine.complete_steps(prompt, req))).result(300)
    assert res.finish_reason == "length", res.finish_reason
    assert res.prompt_tokens + res.completion_tokens <= 256
    assert res.completion_tokens > 200


def test_max_tokens_holds_while_the_answer_is_unfinished_utf8(edge_home):
    """llama-cpp-python skips its max_tokens check while the text ends in an unfinished UTF-8 sequence;
    with repeat_penalty < 1 SmolLM2 repeats such a byte token, so the answer ran on until the context was
    full and llama_decode failed (the /v1/completions 500 schemathesis found, seed 17). The engine's own
    counter stops it at max_tokens."""
    from edge.api import Runtime

    with Runtime(home=str(edge_home), threads=THREADS, offline=True, ctx=256, chat_slots=1) as rt:
        res = rt.complete_job("\x99\xefD\x8e\xf3\xb1\U000e7797", max_tokens=8, repeat_penalty=0.5, top_k=13886,
                              min_p=0.23, seed=0).result(timeout=120)
    assert (res.finish_reason, res.completion_tokens) == ("length", 8)
