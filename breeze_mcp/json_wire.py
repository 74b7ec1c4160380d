"""JSON in and out of the HTTP edges (``/mcp``, REST), whatever the bytes.

:func:`loads` reads a request body like :func:`json.loads`, but nesting deeper than the
interpreter's recursion limit is parsed too (by a loop, not by recursion), so a deep document
is an ordinary value that is audited like any other, never a ``RecursionError``.
:class:`AsciiJSONResponse` writes ``\\uXXXX`` escapes for anything outside ASCII, so a caller's
lone surrogate echoed back (a request id, an argument's name) cannot break the response.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any, cast

from starlette.responses import JSONResponse

__all__ = ["AsciiJSONResponse", "loads"]

# The C-accelerated string scanner json.loads itself uses (same escapes, same strictness).
_scanstring = cast(Callable[[str, int], tuple[str, int]], json.decoder.scanstring)  # type: ignore[attr-defined]
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SPACE = frozenset(" \t\n\r")
#: Values and containers the deep parser reads at most: past it, the body is refused as
#: invalid, so a hostile document costs a bounded, small amount of work.
MAX_DEEP_VALUES = 25_000
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
# The same constants json.loads accepts, in the order its scanner tries them.
_CONSTANTS: tuple[tuple[str, Any], ...] = (
    ("null", None), ("true", True), ("false", False), ("NaN", math.nan),
    ("Infinity", math.inf), ("-Infinity", -math.inf),
)


def loads(raw: bytes) -> Any:
    """The JSON value in ``raw``; ``ValueError`` (or ``UnicodeDecodeError``) if it is not
    JSON."""
    try:
        return json.loads(raw)
    except RecursionError:
        return _loads_deep(raw.decode(json.detect_encoding(raw), "surrogatepass"))


def _skip(s: str, pos: int) -> int:
    if s[pos:pos + 1] not in _SPACE:
        return pos
    match = _WHITESPACE.match(s, pos)
    return match.end() if match else pos


def _key(s: str, pos: int) -> tuple[str, int]:
    if s[pos:pos + 1] != '"':
        raise json.JSONDecodeError("Expecting property name enclosed in double quotes", s, pos)
    key, pos = _scanstring(s, pos + 1)
    pos = _skip(s, pos)
    if s[pos:pos + 1] != ":":
        raise json.JSONDecodeError("Expecting ':' delimiter", s, pos)
    return key, _skip(s, pos + 1)


def _scalar(s: str, pos: int) -> tuple[Any, int]:
    if s[pos:pos + 1] == '"':
        return _scanstring(s, pos + 1)
    for word, value in _CONSTANTS:
        if s.startswith(word, pos):
            return value, pos + len(word)
    match = _NUMBER.match(s, pos)
    if match is None:
        raise json.JSONDecodeError("Expecting value", s, pos)
    integer, fraction, exponent = match.groups()
    number: Any = (float(integer + (fraction or "") + (exponent or ""))
                   if fraction or exponent else int(integer))
    return number, match.end()


def _loads_deep(s: str) -> Any:
    """:func:`json.loads` with an explicit stack instead of recursion."""
    # Each open container, with the key its next value goes to (None in a list).
    stack: list[tuple[list[Any] | dict[str, Any], str | None]] = []
    pos = _skip(s, 0)
    for _ in range(MAX_DEEP_VALUES):
        opener = s[pos:pos + 1]
        value: Any
        if opener in ("[", "{"):
            pos = _skip(s, pos + 1)
            if s[pos:pos + 1] == ("]" if opener == "[" else "}"):
                value, pos = ([] if opener == "[" else {}), pos + 1
            elif opener == "[":
                stack.append(([], None))
                continue
            else:
                key, pos = _key(s, pos)
                stack.append(({}, key))
                continue
        else:
            value, pos = _scalar(s, pos)
        # Attach the value to its container; close every container that ends here.
        while True:
            pos = _skip(s, pos)
            if not stack:
                if pos != len(s):
                    raise json.JSONDecodeError("Extra data", s, pos)
                return value
            container, slot = stack[-1]
            if isinstance(container, list):
                container.append(value)
            else:
                assert slot is not None
                container[slot] = value
            mark = s[pos:pos + 1]
            if mark == ",":
                pos = _skip(s, pos + 1)
                if isinstance(container, dict):
                    key, pos = _key(s, pos)
                    stack[-1] = (container, key)
                break
            if mark != ("]" if isinstance(container, list) else "}"):
                raise json.JSONDecodeError("Expecting ',' delimiter", s, pos)
            pos += 1
            value = stack.pop()[0]
    raise json.JSONDecodeError(f"more than {MAX_DEEP_VALUES} values nested this deep", s, pos)


class AsciiJSONResponse(JSONResponse):
    """A JSON response that any Python string can be written into (lone surrogates too)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode("ascii")
