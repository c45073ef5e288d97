"""Schemathesis hooks for edge-run's API fuzzing (loaded through SCHEMATHESIS_HOOKS=fuzz.schemathesis_hooks).

One thing only: a generated chat asks for at most MAX_TOKENS tokens, so a run of thousands of examples
takes minutes, not hours (llama.cpp decodes ~100 tokens/s here). Only values inside the documented
range are lowered, so invalid examples stay invalid and are still expected to be refused with a 4xx.
"""

from __future__ import annotations

import schemathesis

MAX_TOKENS = 8
LIMIT = 131072  # the documented maximum (edge/chat/request.py MAX_TOKENS)


@schemathesis.hook
def before_call(context, case, kwargs):
    body = case.body
    if not isinstance(body, dict) or not ("messages" in body or "prompt" in body):
        return
    given = False
    for key in ("max_tokens", "max_completion_tokens"):
        v = body.get(key)
        if isinstance(v, int) and not isinstance(v, bool) and MAX_TOKENS < v <= LIMIT:
            body[key] = MAX_TOKENS
        given = given or key in body  # any value given, valid or not, is left as the generator made it
    if not given:
        body["max_tokens"] = MAX_TOKENS
