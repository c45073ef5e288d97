"""Chat request and result types, with input checks that name the value and the fix."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.chat.sampling import MIN_P, REPEAT_PENALTY, TEMPERATURE, TOP_K, TOP_P, Sampling
from edge.errors import BadRequest, ContextTooLong, check_range

if TYPE_CHECKING:
    from edge.chat.tools import ToolSet

ROLES = ("system", "user", "assistant", "tool")
# Ranges shared by ChatRequest.check() and the server's pydantic bodies (so OpenAPI shows them); the
# sampler's (TEMPERATURE, TOP_P, MIN_P, TOP_K, REPEAT_PENALTY) live in edge.chat.sampling.
SEED = (0, 2**32 - 1)                 # llama.cpp seeds are uint32
MAX_TOKENS = (1, 131072)              # the largest context edge-run loads (EDGE_CTX)
MAX_STOP = 8
MAX_STOP_CHARS = 256
MAX_MESSAGES = 4096
MAX_PROMPT_CHARS = 1_000_000
"""Characters of message text accepted before tokenizing: more than any context edge-run loads holds,
so longer prompts are refused at the door instead of being tokenized in the scheduler's worker."""


@dataclass
class ChatRequest:
    """One chat turn to answer (or, with ``prompt``, a raw text completion of ``prompt`` without the chat
    template, as /v1/completions asks).

    Sampling fields left None take the model's recommended values (its GGUF ``general.sampling.*``
    keys), else llama-cpp-python's create_chat_completion defaults (:meth:`sampling`). A None ``seed``
    becomes a random uint32 in :meth:`check`, so every answer reports the seed that reproduces it."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    json_schema: dict | None = None
    n: int = 1  # answers per request: only 1 (OpenAI's field)
    prompt: str | None = None  # raw completion text; None = a chat turn over ``messages``
    max_completion_tokens: int | None = None  # OpenAI's newer name for max_tokens: wins when both are given
    tools: list[dict[str, Any]] | None = None  # OpenAI's function tools (edge.chat.tools)
    tool_choice: str | dict[str, Any] | None = None  # "auto" | "none" | "required" | {type, function: {name}}
    grammar: str | None = field(default=None, repr=False)  # GBNF built from json_schema by check()
    toolset: "ToolSet | None" = field(default=None, repr=False)  # the checked tools, built by check()

    @classmethod
    def completion(cls, prompt: str, **sampling: Any) -> "ChatRequest":
        """A raw text completion of ``prompt`` (its ``messages`` hold the prompt as one user turn)."""
        return cls(messages=[{"role": "user", "content": prompt}], prompt=prompt, **sampling)

    def check(self) -> "ChatRequest":
        """Every field checked before the job is submitted: native code (llama.cpp's sampler and grammar
        parser) only ever sees values and grammars that passed here."""
        # 1. messages (or the raw prompt)
        if self.prompt is not None and (not isinstance(self.prompt, str) or not self.prompt):
            raise BadRequest(f"`prompt` must be a non-empty string, got {str(self.prompt)[:40]!r}.", param="prompt")
        if not isinstance(self.messages, list) or not self.messages:
            raise BadRequest("`messages` must be a non-empty list of {role, content} objects, got "
                             f"{str(self.messages)[:80]!r}.", param="messages")
        if len(self.messages) > MAX_MESSAGES:
            raise BadRequest(f"`messages` has {len(self.messages)} entries; at most {MAX_MESSAGES} are accepted. "
                             "Drop the oldest turns.", param="messages")
        from edge.chat.tools import check_message

        chars = 0
        for i, m in enumerate(self.messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                role = m.get("role") if isinstance(m, dict) else m
                raise BadRequest(f"`messages[{i}].role` must be one of {', '.join(ROLES)}, got "
                                 f"{str(role)[:40]!r}.", param=f"messages[{i}].role")
            self.messages[i] = m = check_message(i, m)
            chars += len(m["content"]) + len(json.dumps(m.get("tool_calls", [])))
        if chars > MAX_PROMPT_CHARS:
            raise ContextTooLong(f"the messages hold {chars:,} characters; at most {MAX_PROMPT_CHARS:,} are accepted "
                                 "(no model edge-run loads has a context that long). Shorten the conversation.",
                                 param="messages")
        # 2. sampling: finite numbers in range (NaN, inf and out-of-range integers never reach llama.cpp)
        if self.n != 1:
            raise BadRequest(f"`n` must be 1, got {self.n}. Send several requests for several answers.", param="n")
        if self.temperature is not None:
            check_range("temperature", self.temperature, *TEMPERATURE, "Use 0 for greedy, 0.7 for varied answers.")
        if self.top_p is not None:
            check_range("top_p", self.top_p, *TOP_P, "Use e.g. 0.95.")
        if self.min_p is not None:
            check_range("min_p", self.min_p, *MIN_P, "Use e.g. 0.05.")
        if self.top_k is not None:
            _check_int("top_k", self.top_k, TOP_K, "Use 0 (off) or e.g. 40.")
        if self.repeat_penalty is not None:
            check_range("repeat_penalty", self.repeat_penalty, *REPEAT_PENALTY, "1.0 is off; use e.g. 1.1.")
        if self.seed is None:  # like llama.cpp and Ollama: a fresh seed per request, reported with the answer
            self.seed = secrets.randbits(32)
        _check_int("seed", self.seed, SEED, "Use e.g. 42, or omit it for a random seed.")
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, MAX_TOKENS, "Omit it to answer until the model stops.")
        if self.max_completion_tokens is not None:
            _check_int("max_completion_tokens", self.max_completion_tokens, MAX_TOKENS,
                       "Omit it to answer until the model stops.")
            self.max_tokens = self.max_completion_tokens
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, list) or len(self.stop) > MAX_STOP:
            raise BadRequest(f"`stop` takes at most {MAX_STOP} strings, got "
                             f"{len(self.stop) if isinstance(self.stop, list) else self.stop!r}.", param="stop")
        for s in self.stop:
            if not isinstance(s, str) or not s or len(s) > MAX_STOP_CHARS:
                raise BadRequest(f"every `stop` string must have 1 to {MAX_STOP_CHARS} characters, got "
                                 f"{str(s)[:40]!r}.", param="stop")
        # 3. schema -> a grammar llama.cpp can parse (built and checked here, before the job runs)
        if self.json_schema is not None:
            if not isinstance(self.json_schema, dict):
                raise BadRequest("`json_schema` must be a JSON object (a JSON Schema).", param="json_schema")
            from edge.chat.grammar import build_grammar

            self.grammar = build_grammar(self.json_schema)
        # 4. tools -> checked function specs and, when a call is required, its grammar (edge.chat.tools)
        if self.tools is not None or self.tool_choice is not None:
            from edge.chat.tools import check_tools

            if self.prompt is not None:
                raise BadRequest("`tools` apply to chat turns, not to raw completions.", param="tools")
            if self.json_schema is not None:
                raise BadRequest("`tools` and `response_format` (json_schema) cannot be combined: a tool call has "
                                 "its own grammar. Drop one of them.", param="tools")
            self.toolset = check_tools(self.tools, self.tool_choice)
        return self

    def sampling(self, recommended: Sampling | None = None) -> Sampling:
        """The sampling values to use: the request's, then the model's ``recommended`` ones, then the defaults
        of llama-cpp-python's create_chat_completion (fields are None when unset)."""
        return Sampling.merge(Sampling(self.temperature, self.top_p, self.top_k, self.min_p, self.repeat_penalty),
                              recommended)


def _check_int(name: str, value: Any, bounds: tuple[int, int], fix: str) -> None:
    import numbers

    lo, hi = bounds
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise BadRequest(f"`{name}` must be an integer, got {str(value)[:40]!r}. {fix}", param=name)
    if not lo <= value <= hi:
        raise BadRequest(f"`{name}` must be between {lo} and {hi}, got {value}. {fix}", param=name)


def fingerprint(seed: int | None) -> str:
    """OpenAI's ``system_fingerprint`` of an answer: edge-run's version and the sampling seed it used
    (``edge-run-0.1.0-seed-1234``); send that seed back to get the same answer."""
    from edge import __version__

    return f"edge-run-{__version__}-seed-{seed}"


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "tool_calls"
    model: str = ""
    seed: int | None = None  # the sampling seed used: pass it back to get the same answer
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's tool_calls (then ``text`` is the raw call text)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def json(self) -> Any:
        return json.loads(self.text)
