"""Chat request and result types, with input checks that name the value and the fix."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from edge.errors import BadRequest, check_range

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ChatRequest:
    """One chat turn to answer. Defaults follow llama-cpp-python's create_chat_completion."""

    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    json_schema: dict | None = None

    def check(self) -> "ChatRequest":
        # 1. messages
        if not isinstance(self.messages, list) or not self.messages:
            raise BadRequest("`messages` must be a non-empty list of {role, content} objects, got "
                             f"{self.messages!r}.", param="messages")
        for i, m in enumerate(self.messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise BadRequest(f"`messages[{i}].role` must be one of {', '.join(ROLES)}, got "
                                 f"{(m.get('role') if isinstance(m, dict) else m)!r}.", param=f"messages[{i}].role")
            if not isinstance(m.get("content", ""), str):
                raise BadRequest(f"`messages[{i}].content` must be a string.", param=f"messages[{i}].content")
        # 2. sampling
        check_range("temperature", self.temperature, 0.0, 2.0, "Use 0 for greedy, 0.7 for varied answers.")
        check_range("top_p", self.top_p, 0.0, 1.0, "Use e.g. 0.95.")
        check_range("min_p", self.min_p, 0.0, 1.0, "Use e.g. 0.05.")
        if self.top_k < 0:
            raise BadRequest(f"`top_k` must be 0 (off) or positive, got {self.top_k}.", param="top_k")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise BadRequest(f"`max_tokens` must be at least 1, got {self.max_tokens}. Omit it to answer until "
                             "the model stops.", param="max_tokens")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if len(self.stop) > 8:
            raise BadRequest(f"`stop` takes at most 8 strings, got {len(self.stop)}.", param="stop")
        # 3. schema
        if self.json_schema is not None and not isinstance(self.json_schema, dict):
            raise BadRequest("`json_schema` must be a JSON object (a JSON Schema).", param="json_schema")
        return self


@dataclass
class ChatResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    model: str = ""

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def json(self) -> Any:
        return json.loads(self.text)
