"""The JSON nesting limit: one number for every decoder of JSON that comes from outside.

msgspec decodes nested arrays and objects recursively and gives up with ``RecursionError`` near
Python's recursion limit, which counts the frames already on the stack, so where it fails depends
on who calls it; jsonschema-rs cannot report the errors of an instance nested 256 levels deep
(``ValueError: Recursion limit reached``). Rather than leave the outcome to either, streamer
refuses, before decoding, any JSON document whose arrays and objects nest more than
:data:`MAX_JSON_DEPTH` levels, with a :class:`TooDeep` error (a ``msgspec.DecodeError``, so every
``except msgspec.DecodeError`` already answers it as JSON that does not parse: ``400 bad_json`` for
a request body, an invalid event for one piece of a tp2 request or one line of a file).

Everything a document that passes can become stays far below what the libraries can take: an
envelope holds a received value at most :data:`ENVELOPE_WRAPPING` levels deeper than it came
(``source.metadata.cloudevents.<extension>``, and one more in a dead letter), and the ``decode``
processor, which reads such envelopes back, allows lines that much deeper.

The check costs two ``bytes.count`` calls (C speed) on a document holding at most
``MAX_JSON_DEPTH`` opening brackets, which cannot nest deeper than that; only a document with more
(a large batch) is scanned, with bytes methods that run in C (see :func:`json_depth`).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate
from operator import methodcaller
from typing import Any, TypeVar

import msgspec

__all__ = [
    "ENVELOPE_WRAPPING",
    "MAX_JSON_DEPTH",
    "TooDeep",
    "depth_limited",
    "json_depth",
]

MAX_JSON_DEPTH = 128
"""Deepest nesting of arrays and objects accepted in a JSON document from outside (``[[1]]`` is 2 deep)."""

ENVELOPE_WRAPPING = 4
"""How much deeper than it was received a value may sit in an envelope or dead letter streamer writes."""

T = TypeVar("T")

# Every byte but quotes and brackets is dropped, and objects' braces become brackets: depth is all that counts.
_NOT_MARKS = bytes(b for b in range(256) if b not in b'"[]{}')
_NORMALIZE = bytes.maketrans(b"{}", b"[]")
_COUNT_OPEN = methodcaller("count", b"[")
_COUNT_CLOSE = methodcaller("count", b"]")
_PASSES = 8


class TooDeep(msgspec.DecodeError):
    """A JSON document nests arrays and objects deeper than the limit it was checked against."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"arrays and objects nest more than {limit} levels deep; streamer accepts at most {limit}"
        )
        self.limit = limit


def json_depth(document: bytes | str) -> int:
    """How deep arrays and objects nest in ``document`` (brackets inside strings do not count).

    Exact for a valid document. For an invalid one, never less than the depth a parser reaches
    before it fails (it may be more), which is all a limit checked before parsing needs. Everything
    runs in C: a few passes over the bytes, then one step per peak of what is left (for a 1 MB
    body, a few milliseconds at worst, about what decoding it costs).
    """
    data = document.encode("utf-8", "surrogatepass") if isinstance(document, str) else document
    if b"\\" in data:
        # Escaped backslashes, then escaped quotes: what is left of a backslash cannot end a string.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = data.translate(_NORMALIZE, _NOT_MARKS)
    # Strings without brackets are now empty pairs of quotes, read left to right as a parser does;
    # a quote left over means some string holds brackets: then drop what lies between quotes.
    brackets = marks.replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(marks.split(b'"')[::2])
    # Each pass removes the innermost arrays ("[]"), so the depth is the number of passes to empty. A
    # few passes take what most documents have; after them, what is left has at most one "[]" (a peak)
    # per 2 * (passes + 1) brackets, and its depth is read at those peaks.
    depth = 0
    while brackets and depth < _PASSES:
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            break
        brackets = shorter
        depth += 1
    if not brackets:
        return depth
    parts = brackets.split(b"[]")
    # The depth at the peak after parts[i]: the brackets opened in parts[0..i], less those closed,
    # plus the peak's own. An unbalanced (invalid) document may also be deepest at its very end.
    nets = list(map(int.__sub__, map(_COUNT_OPEN, parts), map(_COUNT_CLOSE, parts)))
    at_peaks = max(accumulate(nets[:-1]), default=-1) + 1
    return depth + max(at_peaks, sum(nets), 0)


def depth_limited(decode: Callable[[Any], T], limit: int = MAX_JSON_DEPTH) -> Callable[[bytes | str], T]:
    """``decode`` (a msgspec decoder's ``decode``) refusing documents deeper than ``limit`` with :class:`TooDeep`.

    A ``RecursionError`` out of ``decode`` (only possible with a limit near Python's own, or a caller
    already deep in the stack) is reported the same way rather than escaping as a crash.
    """

    def checked(document: bytes | str) -> T:
        if isinstance(document, str):
            opening = document.count("[") + document.count("{")
        else:
            opening = document.count(b"[") + document.count(b"{")
        if opening > limit and json_depth(document) > limit:
            raise TooDeep(limit)
        try:
            return decode(document)
        except RecursionError:
            raise TooDeep(limit) from None

    checked.__doc__ = decode.__doc__
    return checked
