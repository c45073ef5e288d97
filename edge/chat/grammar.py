"""JSON Schema -> GBNF grammar, built and checked before llama.cpp ever sees it.

llama.cpp parses grammars with a recursive-descent parser and samples with a recursive stack walk, in
native code: a grammar nested too deep overflows the C stack and the whole server dies with SIGSEGV
(llama-cpp-python's converter turns ``{"type": "string", "maxLength": 2000}`` into 2000 nested groups;
measured here: 800 levels run, 2000 crash), and a malformed grammar reaches native code unchecked.
So a response_format schema is converted here, in Python, and the GBNF is parsed by a small checker
with llama.cpp's syntax and explicit limits (size, nesting, repetition counts, every rule defined,
a ``root``). Only a grammar that passes is handed to the engine.
"""

from __future__ import annotations

import json
from typing import Any

from edge.errors import BadRequest

MAX_SCHEMA_CHARS = 64 << 10
MAX_SCHEMA_DEPTH = 32
MAX_GRAMMAR_CHARS = 256 << 10
MAX_NESTING = 256
"""Nesting of groups accepted (a quarter of the ~1000 where llama.cpp's recursion was measured to crash)."""
MAX_REPEAT = 256
FIX = ("Use a plain JSON Schema (object/array/string/number/boolean, properties, required, enum) and keep "
       f"maxLength / maxItems / minItems at most {MAX_NESTING - 16}.")


def _bad(msg: str) -> BadRequest:
    return BadRequest(f"`response_format` (json_schema): {msg} {FIX}", param="response_format")


def _depth(obj: Any) -> int:
    """Nesting depth of a JSON value, without recursion."""
    best, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        best = max(best, d)
        if d > MAX_SCHEMA_DEPTH:
            return d
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)
    return best


def build_grammar(schema: Any) -> str:
    """The checked GBNF for a JSON Schema; BadRequest naming response_format when it cannot be one."""
    if not isinstance(schema, dict):
        raise _bad(f"the schema must be a JSON object, got {type(schema).__name__}.")
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise _bad(f"the schema is nested more than {MAX_SCHEMA_DEPTH} levels deep.")
    try:
        text = json.dumps(schema, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _bad(f"the schema is not plain JSON ({e}).") from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise _bad(f"the schema is {len(text):,} characters; at most {MAX_SCHEMA_CHARS:,} are accepted.")
    try:
        conv = schema_converter()
        conv.visit(conv.resolve_refs(json.loads(text), "stdin"), "")
        gbnf = conv.format_grammar()
    except RecursionError:
        raise _bad("the schema refers to itself too deeply to turn into a grammar.") from None
    except Exception as e:  # the converter's own refusals (unsupported keywords, bad $ref, bad pattern ...)
        raise _bad(f"it cannot be turned into a grammar ({e.__class__.__name__}: {str(e)[:120]}).") from None
    check_gbnf(gbnf)
    return gbnf


class _Parser:
    """GBNF as llama.cpp's grammar parser reads it (src/llama-grammar.cpp), with limits."""

    def __init__(self, text: str):
        self.s, self.i = text, 0
        self.defined: set[str] = set()
        self.used: set[str] = set()

    def error(self, msg: str) -> BadRequest:
        return _bad(f"the grammar built from it is not valid ({msg} at offset {self.i}).")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def space(self, newline_ok: bool) -> None:
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t" or (newline_ok and c in "\r\n"):
                self.i += 1
            elif c == "#":
                while self.i < len(self.s) and self.s[self.i] not in "\r\n":
                    self.i += 1
            else:
                return

    def name(self) -> str:
        start = self.i
        while self.i < len(self.s) and (self.s[self.i].isascii() and (self.s[self.i].isalnum() or self.s[self.i] == "-")):
            self.i += 1
        if self.i == start:
            raise self.error("expected a rule name")
        return self.s[start:self.i]

    def char(self, end: str) -> None:
        """One (possibly escaped) character of a literal or a class."""
        if self.i >= len(self.s):
            raise self.error("unterminated " + ("literal" if end == '"' else "character class"))
        if self.s[self.i] == "\\":
            self.i += 1
            c = self.peek()
            n = {"x": 2, "u": 4, "U": 8}.get(c)
            if n:
                digits = self.s[self.i + 1:self.i + 1 + n]
                if len(digits) != n or any(d not in "0123456789abcdefABCDEF" for d in digits):
                    raise self.error("bad \\x/\\u escape")
                if int(digits, 16) > 0x10FFFF:
                    raise self.error("escape beyond Unicode")
                self.i += 1 + n
            elif c in "tnr\\\"[]-^":
                self.i += 1
            else:
                raise self.error(f"unknown escape \\{c}")
        else:
            self.i += 1

    def repeat_count(self) -> None:
        self.i += 1  # "{"
        self.space(True)
        lo = self.number()
        hi: int | None = lo
        self.space(True)
        if self.peek() == ",":
            self.i += 1
            self.space(True)
            hi = self.number() if self.peek().isdigit() else None
            self.space(True)
        if self.peek() != "}":
            raise self.error("expected '}'")
        self.i += 1
        if lo > MAX_REPEAT or (hi is not None and (hi > MAX_REPEAT or hi < lo)):
            raise self.error(f"repetition {{{lo},{hi}}} beyond {MAX_REPEAT}")

    def number(self) -> int:
        start = self.i
        while self.peek().isdigit() and self.peek().isascii():
            self.i += 1
        if self.i == start or self.i - start > 6:
            raise self.error("expected a repetition count")
        return int(self.s[start:self.i])

    def alternates(self, depth: int) -> None:
        if depth > MAX_NESTING:
            raise _bad(f"the grammar built from it nests groups more than {MAX_NESTING} deep (llama.cpp's "
                       "native parser overflows its stack on deep nesting).")
        self.sequence(depth)
        while self.peek() == "|":
            self.i += 1
            self.space(True)
            self.sequence(depth)

    def sequence(self, depth: int) -> None:
        inside = depth > 0
        items = 0
        while self.i < len(self.s):
            c = self.peek()
            if c == '"':
                self.i += 1
                while self.peek() != '"':
                    self.char('"')
                self.i += 1
            elif c == "[":
                self.i += 1
                if self.peek() == "^":
                    self.i += 1
                while self.peek() != "]":
                    self.char("]")
                    if self.peek() == "-" and self.s[self.i + 1:self.i + 2] not in ("]", ""):
                        self.i += 1
                        self.char("]")
                self.i += 1
            elif c == "(":
                self.i += 1
                self.space(True)
                self.alternates(depth + 1)
                if self.peek() != ")":
                    raise self.error("expected ')'")
                self.i += 1
            elif c == ".":
                self.i += 1
            elif c.isascii() and (c.isalnum() or c == "-"):
                self.used.add(self.name())
                self.space(inside)
                if self.s.startswith("::=", self.i):
                    raise self.error("a rule definition inside a sequence")
                items += 1
                continue
            elif c in "*+?" or c == "{":
                if items == 0:
                    raise self.error(f"'{c}' with nothing before it")
                if c == "{":
                    self.repeat_count()
                else:
                    self.i += 1
            else:
                break
            items += 1
            self.space(inside)

    def grammar(self) -> None:
        self.space(True)
        while self.i < len(self.s):
            rule = self.name()
            self.space(False)
            if not self.s.startswith("::=", self.i):
                raise self.error("expected '::='")
            self.i += 3
            self.space(True)
            self.alternates(0)
            self.defined.add(rule)
            if self.peek() == "\r":
                self.i += 1
            if self.peek() == "\n":
                self.i += 1
            elif self.i < len(self.s):
                raise self.error(f"unexpected {self.peek()!r}")
            self.space(True)
        if "root" not in self.defined:
            raise self.error("no `root` rule")
        missing = self.used - self.defined
        if missing:
            raise self.error(f"undefined rule {sorted(missing)[0]!r}")


MAX_INT_DIGITS = 16  # an integer bounded on one side only still ends (llama.cpp's own converter caps at 16 too)


def schema_converter():
    """llama-cpp-python's JSON-Schema-to-GBNF converter, plus what it leaves out: integer ``minimum`` /
    ``maximum`` / ``exclusiveMinimum`` / ``exclusiveMaximum`` (it emitted any integer, so a forced tool call
    could give ``"day": 2022`` against ``maximum: 31``)."""
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class BoundedConverter(SchemaConverter):
        def visit(self, schema, name):
            bounds = int_bounds(schema) if isinstance(schema, dict) and schema.get("type") == "integer" else None
            if bounds is None:
                return super().visit(schema, name)
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            return self._add_rule(rule_name, f"({int_range_gbnf(*bounds)}) space")

    return BoundedConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def int_bounds(schema: dict) -> tuple[int | None, int | None] | None:
    """The integer range [lo, hi] a schema allows (None: unbounded that side), or None when it sets no bound."""
    import math

    def number(key: str) -> float | None:
        v = schema.get(key)
        return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    lows = [math.ceil(v) for v in [number("minimum")] if v is not None] + \
        [math.floor(v) + 1 for v in [number("exclusiveMinimum")] if v is not None]
    highs = [math.floor(v) for v in [number("maximum")] if v is not None] + \
        [math.ceil(v) - 1 for v in [number("exclusiveMaximum")] if v is not None]
    if not lows and not highs:
        return None
    lo, hi = max(lows, default=None), min(highs, default=None)
    if lo is not None and hi is not None and lo > hi:
        raise _bad(f"no integer lies in [{lo}, {hi}] (minimum / maximum).")
    limit = 10 ** MAX_INT_DIGITS - 1
    if (lo is not None and abs(lo) > limit) or (hi is not None and abs(hi) > limit):
        raise _bad(f"integer bounds beyond {MAX_INT_DIGITS} digits are not supported.")
    return (None if lo is None else int(lo)), (None if hi is None else int(hi))


def int_range_gbnf(lo: int | None, hi: int | None) -> str:
    """A GBNF expression matching exactly the integers in [lo, hi] (None: unbounded, up to MAX_INT_DIGITS
    digits), written as JSON writes them: no leading zeros, "-" before negatives, no "-0"."""
    top = 10 ** MAX_INT_DIGITS - 1
    lo, hi = (-top if lo is None else lo), (top if hi is None else hi)
    alts = []
    if lo < 0:
        alts.append('"-" (' + " | ".join(_uint_range(max(1, -hi), -lo)) + ")")
    if hi >= 0:
        alts.extend(_uint_range(max(0, lo), hi))
    return " | ".join(alts)


def _uint_range(lo: int, hi: int) -> list[str]:
    """GBNF alternatives for the non-negative integers lo..hi (0 <= lo <= hi), by digit count."""
    out = []
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a, b = max(lo, 10 ** (n - 1) if n > 1 else 0), min(hi, 10 ** n - 1)
        if a <= b:
            out.extend(_same_length(str(a), str(b)))
    return out


def _same_length(a: str, b: str) -> list[str]:
    """GBNF alternatives for the digit strings from a to b, both of one length."""
    if len(a) == 1:
        return [f"[{a}-{b}]"]
    rest = len(a) - 1
    if a[1:] == "0" * rest and b[1:] == "9" * rest:
        return [f"[{a[0]}-{b[0]}]" + " [0-9]" * rest]
    if a[0] == b[0]:
        return [f'"{a[0]}" (' + " | ".join(_same_length(a[1:], b[1:])) + ")"]
    out = [f'"{a[0]}" (' + " | ".join(_same_length(a[1:], "9" * rest)) + ")"]
    if int(a[0]) + 1 <= int(b[0]) - 1:
        out.append(f"[{int(a[0]) + 1}-{int(b[0]) - 1}]" + " [0-9]" * rest)
    out.append(f'"{b[0]}" (' + " | ".join(_same_length("0" * rest, b[1:])) + ")")
    return out


def check_gbnf(text: str) -> None:
    """Raise BadRequest unless ``text`` is a GBNF grammar llama.cpp can parse and sample safely."""
    if not isinstance(text, str) or not text.strip():
        raise _bad("the grammar built from it is empty.")
    if len(text) > MAX_GRAMMAR_CHARS:
        raise _bad(f"the grammar built from it is {len(text):,} characters; at most {MAX_GRAMMAR_CHARS:,}.")
    _Parser(text).grammar()
