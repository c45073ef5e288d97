"""Function tools for chat (OpenAI's ``tools`` / ``tool_choice``): checks, prompt, grammar, parsing.

The call syntax is Hermes / Qwen2.5's, which most tool-aware chat templates use::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

- Prompt: when the model's chat template mentions ``tools`` it renders them itself (``tools`` is passed
  to the template, transformers-style, and tool calls in the history carry their arguments as objects).
  Otherwise a system prompt listing the tools and the syntax above is put first (:func:`generic_prompt`),
  like llama.cpp server's generic format, and tool results become user turns in ``<tool_response>`` tags.
- ``tool_choice`` "required" or a named function: the answer is constrained by a GBNF grammar built here
  from the tools' JSON Schemas (one call, of one of the allowed tools, whose arguments match its schema).
- "auto": the model answers freely; an answer that is a call in the syntax above (or a bare JSON object
  ``{"name": ..., "arguments": ...}`` of a known tool) is returned as ``tool_calls``, anything else as text.
- "none": the tools are not shown to the model and nothing is parsed.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from edge.errors import BadRequest

MAX_TOOLS = 64
MAX_TOOLS_CHARS = 64 << 10
"""Characters of all tool specs together (as JSON): they are all rendered into the prompt."""
MAX_DESCRIPTION_CHARS = 4096
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""OpenAI's rule for function names."""
CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def spec(self) -> dict[str, Any]:
        """The OpenAI / transformers form a chat template expects."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolSet:
    """Checked tools and choice. ``grammar`` is the GBNF of a required call (None for "auto" / "none")."""

    tools: tuple[Tool, ...]
    choice: str  # "auto" | "none" | "required" | "function" (then ``forced`` names it)
    forced: str | None = None
    grammar: str | None = None

    @property
    def active(self) -> bool:
        """The model sees the tools and its answer may be a call."""
        return self.choice != "none" and bool(self.tools)

    @property
    def required(self) -> bool:
        return self.grammar is not None

    def hold_back(self, text: str) -> bool:
        """For streaming: True while the answer so far (``text``) is or may become a call, so it must not be
        sent as content yet (a required call: always; "auto": see :func:`may_be_call`)."""
        return self.required or may_be_call(text) is not False


def _bad(param: str, msg: str) -> BadRequest:
    return BadRequest(f"`{param}` {msg}", param=param)


# -- 1. checks at the door ------------------------------------------------------------------------
def check_tools(tools: Any, tool_choice: Any) -> ToolSet:
    """The checked ToolSet of a request's ``tools`` and ``tool_choice``; BadRequest naming the field."""
    if tools is None:
        tools = []
    if not isinstance(tools, list):
        raise _bad("tools", f"must be a list of {{type: \"function\", function: {{name, parameters}}}}, got "
                            f"{type(tools).__name__}.")
    if len(tools) > MAX_TOOLS:
        raise _bad("tools", f"has {len(tools)} entries; at most {MAX_TOOLS} are accepted.")
    checked: list[Tool] = []
    for i, t in enumerate(tools):
        checked.append(_check_tool(i, t))
    names = [t.name for t in checked]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise _bad(f"tools[{i}].function.name", f"{n!r} is given twice; tool names must be unique.")
    size = len(json.dumps([t.spec() for t in checked]))
    if size > MAX_TOOLS_CHARS:
        raise _bad("tools", f"hold {size:,} characters of JSON; at most {MAX_TOOLS_CHARS:,} are accepted "
                            "(they are all rendered into the prompt).")
    choice, forced = _check_choice(tool_choice, names)
    allowed = [t for t in checked if forced is None or t.name == forced]
    grammar = call_grammar(allowed) if choice in ("required", "function") else None
    return ToolSet(tuple(checked), choice, forced, grammar)


def _check_tool(i: int, t: Any) -> Tool:
    where = f"tools[{i}]"
    if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(t.get("function"), dict):
        raise _bad(where, "must be {\"type\": \"function\", \"function\": {\"name\", \"description\", "
                          f"\"parameters\"}}}}, got {str(t)[:80]!r}.")
    fn = t["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise _bad(f"{where}.function.name", f"must be 1 to 64 letters, digits, _ or -, got {str(name)[:80]!r}.")
    description = fn.get("description") or ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise _bad(f"{where}.function.description", f"must be a string of at most {MAX_DESCRIPTION_CHARS} "
                                                    "characters.")
    parameters = fn.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    if not isinstance(parameters, dict):
        raise _bad(f"{where}.function.parameters", f"must be a JSON Schema object, got {type(parameters).__name__}.")
    _schema_grammar(parameters, f"{where}.function.parameters")  # it must become a grammar (checked, limited)
    return Tool(name, description, parameters)


def _schema_grammar(schema: dict, param: str) -> str:
    """build_grammar's checks (size, depth, a parsable grammar), its refusal worded for ``param``."""
    from edge.chat.grammar import build_grammar

    try:
        return build_grammar(schema)
    except BadRequest as e:
        raise BadRequest(e.message.replace("`response_format` (json_schema)", f"`{param}`"), param=param) from None


def _check_choice(choice: Any, names: list[str]) -> tuple[str, str | None]:
    if choice is None:
        return ("auto" if names else "none"), None
    if not names:
        raise _bad("tool_choice", "is only allowed when `tools` are given.")
    if isinstance(choice, str):
        if choice not in CHOICES:
            raise _bad("tool_choice", f"must be one of {', '.join(CHOICES)} or {{\"type\": \"function\", "
                                      f"\"function\": {{\"name\": ...}}}}, got {choice[:40]!r}.")
        return choice, None
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) and \
        isinstance(choice.get("function"), dict) else None
    if not isinstance(choice, dict) or choice.get("type", "function") != "function" or not isinstance(name, str):
        raise _bad("tool_choice", f"must name a function as {{\"type\": \"function\", \"function\": {{\"name\": "
                                  f"...}}}}, got {str(choice)[:80]!r}.")
    if name not in names:
        raise _bad("tool_choice.function.name", f"{name[:64]!r} is not one of the tools ({', '.join(names)}).")
    return "function", name


def check_message(i: int, m: dict[str, Any]) -> dict[str, Any]:
    """A chat message with its content as a string (OpenAI's null content, e.g. of an assistant turn that only
    called tools, is "") and, for an assistant turn with ``tool_calls``, the calls normalized (arguments as
    objects, as chat templates expect)."""
    out = dict(m)
    content = m.get("content")
    calls = m.get("tool_calls")
    if content is not None and not isinstance(content, str):
        raise _bad(f"messages[{i}].content", "must be a string.")
    out["content"] = content or ""
    if calls is not None:
        if m["role"] != "assistant":
            raise _bad(f"messages[{i}].tool_calls", "belong to assistant messages only.")
        if not isinstance(calls, list) or len(calls) > MAX_TOOLS:
            raise _bad(f"messages[{i}].tool_calls", f"must be a list of at most {MAX_TOOLS} calls.")
        out["tool_calls"] = [_check_call(f"messages[{i}].tool_calls[{j}]", c) for j, c in enumerate(calls)]
    if m["role"] == "tool" and not isinstance(m.get("tool_call_id") or "", str):
        raise _bad(f"messages[{i}].tool_call_id", "must be a string (the id of the call this answers).")
    return out


def _check_call(where: str, c: Any) -> dict[str, Any]:
    fn = c.get("function") if isinstance(c, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not NAME.match(fn["name"]):
        raise _bad(where, f"must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}, "
                          f"got {str(c)[:80]!r}.")
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args or "{}")
        except (ValueError, RecursionError):
            raise _bad(f"{where}.function.arguments", f"must be a JSON object (as a string), got {args[:80]!r}.") \
                from None
    if not isinstance(args, dict):
        raise _bad(f"{where}.function.arguments", "must be a JSON object.")
    call_id = c.get("id") or ""
    if not isinstance(call_id, str):
        raise _bad(f"{where}.id", "must be a string.")
    return {"id": call_id, "type": "function", "function": {"name": fn["name"], "arguments": args}}


# -- 2. the prompt -----------------------------------------------------------------------------------
def template_knows_tools(template: str) -> bool:
    """True when a chat template renders ``tools`` itself."""
    return re.search(r"\btools\b", template) is not None


def prompt_messages(messages: list[dict[str, Any]], toolset: ToolSet | None, *, native: bool
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and ``tools`` to render with the model's template. A native template gets both as given;
    otherwise the tools go into a generic system prompt, calls into the assistant text (the syntax above)
    and tool results into user turns."""
    tools = [t.spec() for t in toolset.tools] if toolset is not None and toolset.active else None
    if native:
        return messages, tools
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            text = "\n".join(call_text(c["function"]["name"], c["function"]["arguments"]) for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (m["content"] + "\n" if m["content"] else "") + text})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools is not None:
        system = generic_prompt(toolset)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + system}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out, None


def call_text(name: str, arguments: dict[str, Any]) -> str:
    """One call in the Hermes syntax."""
    return f"{CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n{CALL_CLOSE}"


def generic_prompt(toolset: ToolSet) -> str:
    """The system prompt that shows the tools to a model whose template does not know them."""
    specs = "\n".join(json.dumps(t.spec(), ensure_ascii=False) for t in toolset.tools)
    text = ("You can call functions. Their signatures, as JSON Schemas, are within <tools></tools> tags:\n"
            f"<tools>\n{specs}\n</tools>\n"
            "To call a function, answer with only a JSON object of its name and arguments within "
            "<tool_call></tool_call> tags:\n"
            f"{CALL_OPEN}\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n{CALL_CLOSE}")
    if toolset.forced:
        text += f"\nCall the function {toolset.forced} now."
    elif toolset.choice == "required":
        text += "\nCall one of the functions now."
    return text


# -- 3. the grammar of a required call -----------------------------------------------------------------
def call_grammar(tools: list[Tool]) -> str:
    """GBNF for one call of one of ``tools``: ``<tool_call>\\n{"name": N, "arguments": A}\\n</tool_call>``
    where A matches N's parameters schema. Each schema was checked by build_grammar at the door; the
    combined grammar is checked again (size, nesting) before it is returned."""
    from edge.chat.grammar import check_gbnf, schema_converter

    conv = schema_converter()
    alternatives = []
    for i, tool in enumerate(tools):
        try:
            schema = conv.resolve_refs(copy.deepcopy(tool.parameters), f"tool-{i}")
            args = conv.visit(schema, f"tool-{i}-arguments")
        except Exception as e:  # the converter's own refusals, already met by build_grammar at the door
            raise _bad("tools", f"cannot be turned into a call grammar ({e.__class__.__name__}: {str(e)[:120]}).") \
                from None
        name = json.dumps(json.dumps(tool.name))  # the GBNF literal of the JSON string
        alternatives.append(conv._add_rule(
            f"tool-{i}", f'"{{" space "\\"name\\"" space ":" space {name} space "," space "\\"arguments\\"" space '
                         f'":" space {args} "}}" space'))
    conv._add_rule("root", f'"{CALL_OPEN}\\n" ( {" | ".join(alternatives)} ) "\\n{CALL_CLOSE}"')
    gbnf = conv.format_grammar()
    try:
        check_gbnf(gbnf)
    except BadRequest as e:
        raise BadRequest(e.message.replace("`response_format` (json_schema)", "`tools`"), param="tools") from None
    return gbnf


# -- 4. the answer -----------------------------------------------------------------------------------
def parse_calls(text: str, toolset: ToolSet) -> list[dict[str, Any]] | None:
    """The OpenAI ``tool_calls`` of an answer that is one or more calls of known tools, else None (text).

    Each call is read with a JSON decoder from where it starts (a string argument may hold "</tool_call>"),
    leniently about raw control characters in strings (the grammar allows them; the arguments are written
    back as strict JSON)."""
    names = {t.name for t in toolset.tools}
    decoder = json.JSONDecoder(strict=False)
    body = text.strip()
    tagged = body.startswith(CALL_OPEN)
    if not tagged and not body.startswith("{"):
        return None
    calls, i = [], 0
    while i < len(body):
        if tagged:
            if not body.startswith(CALL_OPEN, i):
                return None
            i += len(CALL_OPEN)
        try:
            obj, i = decoder.raw_decode(body, _skip_space(body, i))
        except (ValueError, RecursionError):
            return None
        args = obj.get("arguments", obj.get("parameters")) if isinstance(obj, dict) else None
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = decoder.decode(args)
            except (ValueError, RecursionError):
                return None
        if not isinstance(obj, dict) or obj.get("name") not in names or not isinstance(args, dict):
            return None
        calls.append({"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                      "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}})
        i = _skip_space(body, i)
        if tagged and body.startswith(CALL_CLOSE, i):
            i = _skip_space(body, i + len(CALL_CLOSE))
        elif i < len(body):
            return None  # text after the call: an answer that only starts like one
    return calls or None


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i].isspace():
        i += 1
    return i


def may_be_call(text: str) -> bool | None:
    """For streaming under "auto": True when the answer so far may still become a call (hold it back),
    False when it is plain text (stream it), None when nothing but whitespace came yet."""
    body = text.lstrip()
    if not body:
        return None
    return body.startswith("{") or body.startswith(CALL_OPEN) or CALL_OPEN.startswith(body)
