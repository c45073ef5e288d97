"""Integer bounds in JSON Schemas (minimum / maximum / exclusive*) hold in the grammar: llama-cpp-python's
converter emitted any integer for them, so a forced tool call gave ``"day": 2022`` against ``maximum: 31``."""

from __future__ import annotations

import json
import re

import pytest

from edge.chat.grammar import build_grammar, int_bounds, int_range_gbnf
from edge.errors import BadRequest

from support import THREADS


def _matcher(expr: str) -> re.Pattern:
    """The GBNF expression (quoted literals, [a-b] classes, groups, |) as a Python regular expression."""
    return re.compile("^(" + re.sub(r'"([^"]*)"', lambda m: re.escape(m.group(1)), expr.replace(" ", "")) + ")$")


@pytest.mark.parametrize("lo,hi", [(1, 31), (0, 0), (5, 5), (-5, 5), (-31, -1), (-100, 37), (10, 99), (7, 1234),
                                   (99, 100), (0, None), (None, -3), (None, 12), (13, None), (-7, None)])
def test_the_range_grammar_matches_exactly_the_integers_in_range_as_json_writes_them(lo, hi):
    rx = _matcher(int_range_gbnf(lo, hi))
    for v in range(-3000 if lo is None else min(lo - 50, -60), 3000 if hi is None else max(hi + 50, 60)):
        assert bool(rx.match(str(v))) == ((lo is None or v >= lo) and (hi is None or v <= hi)), (lo, hi, v)
    for text in ("-0", "01", "007", "", "-", "1.0"):
        assert not rx.match(text), (lo, hi, text)


def test_bounds_are_read_from_every_keyword_and_an_empty_range_is_a_400():
    assert int_bounds({"type": "integer"}) is None
    assert int_bounds({"type": "integer", "minimum": 1, "maximum": 31}) == (1, 31)
    assert int_bounds({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}) == (1, 9)
    assert int_bounds({"type": "integer", "minimum": 0.5, "maximum": 3.5}) == (1, 3)
    with pytest.raises(BadRequest) as e:
        build_grammar({"type": "integer", "minimum": 5, "maximum": 4})
    assert e.value.param == "response_format" and "[5, 4]" in e.value.message


def test_sampled_answers_keep_the_bounds(runtime):
    """The real model, sampling hot (temperature 1.5), through the grammar: every answer's integers are in range."""
    schema = {"type": "object", "properties": {"day": {"type": "integer", "minimum": 1, "maximum": 31},
                                               "offset": {"type": "integer", "minimum": -3, "maximum": 250}},
              "required": ["day", "offset"]}
    for seed in range(8):
        r = runtime.chat([{"role": "user", "content": "Pick the year 2022 and an offset of 999."}], json_schema=schema,
                         temperature=1.5, top_k=0, top_p=1.0, min_p=0.0, seed=seed, max_tokens=48)
        got = json.loads(r.text)
        assert 1 <= got["day"] <= 31 and -3 <= got["offset"] <= 250, (seed, got)
