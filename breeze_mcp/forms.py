"""The one reader of form bodies and query strings for the sign-in, consent and OAuth endpoints.

A form body is ``application/x-www-form-urlencoded`` only (multipart is never parsed, so no
temporary file is ever written), read while streaming up to ``BREEZE_MAX_FORM_BYTES`` (a lying
or absent ``Content-Length`` does not help), with at most ``BREEZE_MAX_FORM_FIELDS`` fields.
Names and values must be well-formed percent-encoding of strict UTF-8 without control
characters, so nothing after this point meets a NUL, a lone surrogate or a replacement
character. Each refusal is a :class:`FormError` that the endpoint answers in its own shape.
"""

from __future__ import annotations

import re
from typing import Literal

from starlette.datastructures import ImmutableMultiDict
from starlette.requests import Request

from breeze_mcp.config import Settings

__all__ = ["Fields", "FormError", "check_text", "read_form", "read_query"]

Fields = ImmutableMultiDict[str, str]

FORM_TYPE = "application/x-www-form-urlencoded"

# C0 controls (tab, CR and LF included: no form field of ours spans lines) and DEL.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_HEX = re.compile(rb"%([0-9A-Fa-f]{2})")


class FormError(Exception):
    """A body or query string refused before any field was used."""

    def __init__(self, status: Literal[400, 413, 415], message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_text(value: str, what: str = "a parameter") -> str:
    """``value`` unchanged, or :class:`FormError` (400) if it holds a control character."""
    if _CONTROL.search(value):
        raise FormError(400, f"{what} contains a control character")
    return value


def _decode(raw: bytes) -> str:
    if _BAD_PERCENT.search(raw):
        raise FormError(400, "malformed percent-encoding")
    data = _HEX.sub(lambda m: bytes([int(m.group(1), 16)]), raw.replace(b"+", b" "))
    try:
        text = data.decode("utf-8")  # strict: refuses lone surrogates and overlong forms
    except UnicodeDecodeError:
        raise FormError(400, "a parameter is not valid UTF-8") from None
    return check_text(text)


def parse(raw: bytes, max_fields: int, *, too_many: Literal[400, 413]) -> Fields:
    """Strictly parse urlencoded ``raw``; empty segments (``a=1&&b=2``) are skipped."""
    pairs: list[tuple[str, str]] = []
    for segment in raw.split(b"&"):
        if not segment:
            continue
        if len(pairs) == max_fields:
            raise FormError(too_many, f"more than {max_fields} fields")
        name, _, value = segment.partition(b"=")
        pairs.append((_decode(name), _decode(value)))
    return ImmutableMultiDict(pairs)


async def read_form(request: Request, settings: Settings) -> Fields:
    """The request's urlencoded body, bounded while it is read."""
    media_type, _, options = request.headers.get("content-type", "").partition(";")
    if media_type.strip().lower() != FORM_TYPE:
        raise FormError(415, f"send {FORM_TYPE}")
    charset = re.search(r"charset\s*=\s*\"?([^\";\s]+)", options, re.IGNORECASE)
    if charset and charset.group(1).lower() not in ("utf-8", "utf8"):
        raise FormError(415, "only UTF-8 forms are accepted")
    limit = settings.max_form_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FormError(413, f"the form is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise FormError(413, f"the form is larger than {limit} bytes")
    return parse(bytes(body), settings.max_form_fields, too_many=413)


def read_query(request: Request, settings: Settings) -> Fields:
    """The query string, held to the same rules as a form body."""
    raw: bytes = request.scope.get("query_string", b"")
    return parse(raw, settings.max_form_fields, too_many=400)
