"""Function tools in the chat engine and the Python API: checks at the door, the prompt (the model's own
tools template, or the generic system prompt), grammar-forced calls and tool results fed back."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edge.chat.engine import LlamaChatEngine
from edge.chat.request import ChatRequest
from edge.chat.tools import parse_calls
from edge.errors import BadRequest

from support import THREADS, open_runtime
from tool_model import TOOLS_MODEL, edited_home_cached

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                            "unit": {"enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city now",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "description": "Add two integers", "parameters": ADD}}]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
CALLED = [{"role": "user", "content": "What's the weather in Paris?"},
          {"role": "assistant", "content": None, "tool_calls": [
              {"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}]},
          {"role": "tool", "tool_call_id": "call_1", "content": "18 degrees and sunny"}]


def ask(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


@pytest.mark.parametrize("kw, param", [
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": []}}]}, "tools[0].function.parameters"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"s": {"type": "string", "maxLength": 5000}}}}}]},
     "tools[0].function.parameters"),
    ({"tools": TOOLS + [TOOLS[0]]}, "tools[2].function.name"),
    ({"tools": [{"type": "code"}]}, "tools[0]"),
    ({"tools": TOOLS * 40}, "tools"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "json_schema": {"type": "object"}}, "tools"),
])
def test_bad_tools_are_refused_at_the_door_naming_the_field(kw, param):
    with pytest.raises(BadRequest) as err:
        ChatRequest(messages=ask("hi"), **kw).check()
    assert err.value.param == param and f"`{param}`" in err.value.message, err.value.message


@pytest.mark.parametrize("message, param", [
    ({"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{oops"}}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"role": "user", "content": "x", "tool_calls": CALLED[1]["tool_calls"]}, "messages[1].tool_calls"),
    ({"role": "tool", "tool_call_id": 5, "content": "x"}, "messages[1].tool_call_id"),
    ({"role": "user", "content": None}, None),  # accepted: null content is an empty turn
])
def test_tool_messages_are_checked(message, param):
    req = ChatRequest(messages=[*ask("hi"), message])
    if param is None:
        req.check()
        return
    with pytest.raises(BadRequest) as err:
        req.check()
    assert err.value.param == param


@pytest.fixture(scope="module")
def tools_engine():
    home = edited_home_cached()
    eng = LlamaChatEngine(str(home / "models" / TOOLS_MODEL / "model.gguf"), threads=THREADS, slots=1, n_ctx=2048)
    yield eng
    eng.close()


def test_a_tools_template_renders_the_tools_the_call_and_the_result(tools_engine):
    req = ChatRequest(messages=[dict(m) for m in CALLED], tools=TOOLS).check()
    assert tools_engine.native_tools
    _, rendered = tools_engine.tokenize_prompt(req.messages, req.toolset)
    prompt = rendered.prompt
    assert "# Tools" in prompt and json.dumps(TOOLS[1]) in prompt  # the template's own way, the specs as given
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>' \
        in prompt  # the call's arguments reach the template as an object
    assert "<|im_start|>user\n<tool_response>\n18 degrees and sunny\n</tool_response><|im_end|>" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


def test_a_template_without_tools_gets_the_generic_prompt(chat_model_path):
    from edge.chat.tools import generic_prompt

    eng = LlamaChatEngine(str(chat_model_path), threads=THREADS, slots=1, n_ctx=2048)
    try:
        assert not eng.native_tools
        req = ChatRequest(messages=[dict(m) for m in CALLED], tools=TOOLS, tool_choice="required").check()
        _, rendered = eng.tokenize_prompt(req.messages, req.toolset)
    finally:
        eng.close()
    assert generic_prompt(req.toolset) in rendered.prompt and "Call one of the functions now." in rendered.prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>' \
        in rendered.prompt
    assert "<tool_response>\n18 degrees and sunny\n</tool_response>" in rendered.prompt


@pytest.fixture(scope="module")
def edited_runtime():
    with open_runtime(edited_home_cached()) as rt:
        yield rt


@pytest.mark.parametrize("model", [None, TOOLS_MODEL])
def test_a_forced_call_matches_its_schema(runtime, edited_runtime, model):
    """On the default model (generic prompt) and on a tools template: named and "required" calls."""
    rt = runtime if model is None else edited_runtime
    for q, choice, seed in [("What's the weather in Oslo?", {"type": "function", "function": {"name": "get_weather"}}, 1),
                            ("Add 2 and 40.", "required", 2),
                            ("Tell me a joke.", {"type": "function", "function": {"name": "add"}}, 3)]:
        res = rt.chat(ask(q), model=model, tools=TOOLS, tool_choice=choice, seed=seed, max_tokens=96)
        assert res.finish_reason == "tool_calls" and len(res.tool_calls) == 1, res.text
        fn = res.tool_calls[0]["function"]
        if isinstance(choice, dict):
            assert fn["name"] == choice["function"]["name"]
        jsonschema.validate(json.loads(fn["arguments"]), SCHEMAS[fn["name"]])
        assert res.tool_calls[0]["id"].startswith("call_") and res.seed == seed


def test_tool_choice_none_and_a_tool_result_are_answered_as_text(runtime):
    res = runtime.chat(ask("What's the weather in Paris?"), tools=TOOLS, tool_choice="none", max_tokens=24, seed=1)
    assert res.tool_calls is None and res.finish_reason in ("stop", "length") and res.text
    follow = runtime.chat([dict(m) for m in CALLED], tools=TOOLS, max_tokens=40, temperature=0)
    assert follow.tool_calls is None and follow.text.strip(), follow.text


def test_answers_are_parsed_as_calls_only_when_they_are_calls():
    ts = ChatRequest(messages=ask("x"), tools=TOOLS).check().toolset
    call = parse_calls('<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>', ts)
    assert call and call[0]["function"] == {"name": "add", "arguments": '{"a": 1, "b": 2}'}
    two = parse_calls('<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>\n'
                      '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}</tool_call>', ts)
    assert [c["function"]["name"] for c in two] == ["add", "get_weather"]
    assert parse_calls('{"name": "add", "parameters": {"a": 1}}', ts)[0]["function"]["arguments"] == '{"a": 1}'
    tricky = parse_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "a}}\n</tool_call>\nb"}}\n'
                         '</tool_call>', ts)  # a raw newline and the closing tag inside a string (grammar-valid)
    assert json.loads(tricky[0]["function"]["arguments"]) == {"city": "a}}\n</tool_call>\nb"}
    for text in ["Hello!", '<tool_call>{"name": "add", "arguments": {}}</tool_call> and more', '{"name": "rm", "arguments": {}}', "<tool_call>{oops", '{"a": 1}']:
        assert parse_calls(text, ts) is None, text


def test_streaming_holds_back_text_only_while_it_may_be_a_call():
    """Under "auto" the 135M model here answers text (measured: no call on these prompts), so the hold-back
    rule the server's stream uses is checked on its own; a required call holds everything back."""
    auto = ChatRequest(messages=ask("x"), tools=TOOLS).check().toolset
    required = ChatRequest(messages=ask("x"), tools=TOOLS, tool_choice="required").check().toolset
    for text, held in [("", True), ("  \n", True), ("<tool", True), ("<tool_call>\n{", True), ('{"na', True),
                       ("Hello", False), ("<b>", False), ("<tool_response>", False)]:
        assert auto.hold_back(text) is held, text
        assert required.hold_back(text)
