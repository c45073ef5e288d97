"""Tool calls and seeds through /v1/chat/completions, with the real `openai` client against a real server
(uvicorn in this process) over a SmolLM2 copy whose chat template knows tools (Qwen2.5's)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from support import open_runtime, serve_in_thread
from tool_model import TOOLS_MODEL, edited_home_cached

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
EVENT = {"type": "object", "properties": {"title": {"type": "string", "maxLength": 60},
                                          "day": {"type": "integer", "minimum": 1, "maximum": 31},
                                          "guests": {"type": "array", "items": {"type": "string", "maxLength": 30},
                                                     "maxItems": 4}},
         "required": ["title", "day"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "create_event", "description": "Put an event in the calendar",
                                           "parameters": EVENT}}]
SCHEMAS = {"get_weather": WEATHER, "create_event": EVENT}
PROMPTS = ["What's the weather like in Lisbon?", "Plan a birthday party with Ana and Bo on the 12th.",
           "Is it raining in Tokyo right now?", "Hello there!"]


@pytest.fixture(scope="module")
def url():
    with open_runtime(edited_home_cached()) as rt, serve_in_thread(rt) as base:
        yield base


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def ask(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


@pytest.mark.parametrize("choice", ["required", "get_weather", "create_event"])
def test_a_forced_call_parses_against_its_schema_every_time(client, choice):
    tool_choice = "required" if choice == "required" else named(choice)
    for i, q in enumerate(PROMPTS):
        r = client.chat.completions.create(model=TOOLS_MODEL, messages=ask(q), tools=TOOLS, tool_choice=tool_choice,
                                           seed=100 + i, max_tokens=128)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None, c
        (call,) = c.message.tool_calls
        assert call.type == "function" and call.id.startswith("call_")
        if choice != "required":
            assert call.function.name == choice
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
        assert r.system_fingerprint.endswith(f"-seed-{100 + i}")


def test_streamed_and_non_streamed_calls_agree(client):
    for q, choice in [(PROMPTS[0], "required"), (PROMPTS[1], named("create_event"))]:
        kw = dict(model=TOOLS_MODEL, messages=ask(q), tools=TOOLS, tool_choice=choice, seed=5, max_tokens=128)
        whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
        with client.chat.completions.stream(**kw) as stream:  # the client's own delta accumulator
            events = list(stream)
            final = stream.get_final_completion()
        got = final.choices[0]
        assert got.finish_reason == "tool_calls" and got.message.content is None
        (call,) = got.message.tool_calls
        assert (call.function.name, call.function.arguments) == (whole.function.name, whole.function.arguments)
        assert any(e.type == "tool_calls.function.arguments.done" for e in events)
        chunks = list(client.chat.completions.create(**kw, stream=True))
        deltas = [d for ch in chunks for d in (ch.choices[0].delta.tool_calls or []) if ch.choices]
        assert deltas[0].index == 0 and deltas[0].id and deltas[0].function.name == whole.function.name
        assert "".join(d.function.arguments or "" for d in deltas) == whole.function.arguments
        assert {ch.system_fingerprint for ch in chunks} == {"edge-run-" + chunks[0].system_fingerprint[9:]}
        assert all(ch.system_fingerprint.endswith("-seed-5") for ch in chunks)


def collect(chunks) -> tuple[str, list[tuple[str, str]], str | None]:
    """Content, (name, arguments) calls and finish_reason of raw streamed chunks, joined by OpenAI's rules."""
    content, calls, finish = [], {}, None
    for ch in chunks:
        for c in ch.choices:
            content.append(c.delta.content or "")
            for d in c.delta.tool_calls or []:
                name, args = calls.get(d.index, ("", ""))
                calls[d.index] = (name + (d.function.name or ""), args + (d.function.arguments or ""))
            finish = c.finish_reason or finish
    return "".join(content), [calls[i] for i in sorted(calls)], finish


def test_auto_answers_text_or_a_call_and_streams_the_same(client):
    kinds = set()
    for i, q in enumerate(PROMPTS):
        kw = dict(model=TOOLS_MODEL, messages=ask(q), tools=TOOLS, seed=i, max_tokens=64)
        whole = client.chat.completions.create(**kw).choices[0]
        content, calls, finish = collect(client.chat.completions.create(**kw, stream=True))
        assert finish == whole.finish_reason
        if whole.message.tool_calls:
            kinds.add("call")
            assert whole.finish_reason == "tool_calls" and whole.message.content is None and not content
            assert calls == [(t.function.name, t.function.arguments) for t in whole.message.tool_calls]
        else:
            kinds.add("text")
            assert content == whole.message.content and not calls
    assert kinds  # which of the two a 135M model picks is its business; both paths agree when streamed


def test_a_tool_result_is_fed_back_and_answered(client):
    first = client.chat.completions.create(model=TOOLS_MODEL, messages=ask(PROMPTS[0]), tools=TOOLS,
                                           tool_choice=named("get_weather"), seed=1, max_tokens=128)
    msg = first.choices[0].message
    history = [*ask(PROMPTS[0]), msg.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": msg.tool_calls[0].id, "content": "21 degrees and sunny"}]
    answer = client.chat.completions.create(model=TOOLS_MODEL, messages=history, tools=TOOLS, tool_choice="none",
                                            temperature=0, max_tokens=48)
    c = answer.choices[0]
    assert c.message.tool_calls is None and c.message.content.strip()
    # the call and the result are in the prompt: it is longer than the question alone by at least their tokens
    alone = client.chat.completions.create(model=TOOLS_MODEL, messages=ask(PROMPTS[0]), temperature=0, max_tokens=1)
    assert answer.usage.prompt_tokens >= alone.usage.prompt_tokens + 20


def test_without_a_seed_the_fingerprint_reports_one_that_reproduces_the_answer(client):
    msgs = ask("Invent a name for a pet dragon.")
    r = client.chat.completions.create(model=TOOLS_MODEL, messages=msgs, temperature=0.8, max_tokens=16)
    seed = int(r.system_fingerprint.rsplit("-seed-", 1)[1])
    again = client.chat.completions.create(model=TOOLS_MODEL, messages=msgs, temperature=0.8, max_tokens=16,
                                           seed=seed)
    assert again.choices[0].message.content == r.choices[0].message.content
    texts = {client.chat.completions.create(model=TOOLS_MODEL, messages=msgs, temperature=0.8,
                                            max_tokens=16).choices[0].message.content for _ in range(3)}
    assert len(texts | {r.choices[0].message.content}) >= 2


@pytest.mark.parametrize("body, param", [
    ({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"s": {"type": "string", "maxLength": 5000}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": TOOLS, "tool_choice": named("delete_everything")}, "tool_choice.function.name"),
    ({"tools": TOOLS, "tool_choice": "always"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function"}]}, "tools.0.function"),
    ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "tools"),
    ({"messages": [{"role": "assistant", "content": None,
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
])
def test_bad_tools_bodies_are_400s_naming_the_field(url, body, param):
    r = httpx.post(url + "/v1/chat/completions", json={"model": TOOLS_MODEL, "messages": ask("hi"), **body},
                   timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
