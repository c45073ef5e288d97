"""edge.api.Runtime, the one door: a request is checked once, its model resolved and verified once, and a
verified model is not verified (nor its manifest read) again until one of its files changes."""

from __future__ import annotations

import pytest

from edge.chat.request import ChatRequest
from edge.errors import BadRequest
from support import CHAT_MODEL

HI = [{"role": "user", "content": "Hi"}]


def _count(monkeypatch, obj, name: str) -> list:
    calls: list = []
    real = getattr(obj, name)

    def counted(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(obj, name, counted)
    return calls


def test_a_chat_request_resolves_verifies_and_checks_once(runtime, monkeypatch):
    runtime.chat(HI, max_tokens=1, temperature=0)  # loaded
    resolved = _count(monkeypatch, runtime, "resolve_model")
    ensured = _count(monkeypatch, runtime, "ensure")
    checked = _count(monkeypatch, ChatRequest, "check")
    installed = _count(monkeypatch, runtime.store, "installed")
    handle = runtime.chat_job(HI, max_tokens=2, temperature=0)
    assert handle.result(timeout=120).completion_tokens >= 1 and handle.model_id == CHAT_MODEL
    assert (len(resolved), len(ensured), len(checked)) == (1, 1, 1)
    assert installed == []  # verified at load: only re-stamped, no verification and no manifest read


def test_a_completion_is_a_chat_request_with_a_prompt(runtime):
    res = runtime.complete_job("The capital of France is", max_tokens=3, temperature=0).result(timeout=120)
    assert res.completion_tokens >= 1
    with pytest.raises(BadRequest, match="`prompt` must be a non-empty string"):
        runtime.complete_job("")
    with pytest.raises(BadRequest, match="`n` must be 1, got 2"):
        runtime.chat_job(ChatRequest(messages=HI, n=2))
    with pytest.raises(BadRequest, match="`max_completion_tokens` must be between 1"):
        runtime.chat_job(ChatRequest(messages=HI, max_tokens=5, max_completion_tokens=0))
