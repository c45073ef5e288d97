"""An answer's text as its tokens arrive: what may be streamed now, and where stop strings end it.

The rules are llama-cpp-python's ``create_completion`` (so answers read the same as through it): the
text is the bytes of the answer tokens; it ends before the first of the ``stop`` strings (in the order
given) that occurs in it, checked while the text does not end inside a UTF-8 character; streamed pieces
hold back a tail that could still become a stop string or is an unfinished UTF-8 character, so the
pieces joined are exactly the final text.
"""

from __future__ import annotations


def incomplete_utf8_tail(data: bytes) -> int:
    """How many trailing bytes of ``data`` are an unfinished UTF-8 character (0 when it ends cleanly)."""
    for k in range(1, min(4, len(data)) + 1):
        byte = data[-k]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for the lead byte
            continue
        if byte < 0xC0:  # ASCII
            return 0
        need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return k if need > k else 0
    return 0


class AnswerText:
    """Collects answer bytes; :meth:`add` returns the newly streamable text, :attr:`stopped` says a stop
    string ended the answer, :meth:`finish` returns the rest and :attr:`text` the whole answer."""

    def __init__(self, stops: list[str]):
        self.stops = [s.encode("utf-8") for s in stops if s]
        self.data = b""
        self.end: int | None = None  # where a stop string cut the answer
        self.sent = 0  # bytes already streamed
        self._searched = 0  # stop strings cannot start before this offset (checked up to here)
        self._longest = max((len(s) for s in self.stops), default=0)

    @property
    def stopped(self) -> bool:
        return self.end is not None

    def add(self, piece: bytes) -> str:
        """Append one token's bytes; the text that may be streamed now ("" while held back)."""
        self.data += piece
        unfinished = incomplete_utf8_tail(self.data)
        if not unfinished and self.stops:
            start = max(0, self._searched - self._longest + 1)  # only the tail can hold a new occurrence
            found = [s for s in self.stops if self.data.find(s, start) >= 0]
            if found:
                self.end = self.data.index(found[0], start)
                return self._take(self.end)
            self._searched = len(self.data)
        return self._take(len(self.data) - max(unfinished, self._stop_prefix()))

    def finish(self) -> str:
        """The text not streamed yet, up to the stop string if one ended the answer."""
        return self._take(len(self.data) if self.end is None else self.end)

    @property
    def text(self) -> str:
        return self.data[: self.end].decode("utf-8", errors="ignore")

    def _stop_prefix(self) -> int:
        """The longest tail of the text that is the start of a stop string (it may become one)."""
        longest = 0
        for s in self.stops:
            for i in range(min(len(s), len(self.data)), longest, -1):
                if self.data.endswith(s[:i]):
                    longest = i
                    break
        return longest

    def _take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out = self.data[self.sent:upto].decode("utf-8", errors="ignore")
        self.sent = upto
        return out
