"""The request every endpoint receives: Starlette's, with headers looked up through a dict.

Starlette's :class:`~starlette.datastructures.Headers` answers each lookup by walking every
header of the request in Python, and a miss (``Origin``, ``X-Request-Id`` … are usually absent)
walks them all and raises ``KeyError`` inside ``Mapping.get``. A tool call makes about a dozen
lookups, so their cost grew with each header a client sends. :class:`IndexedHeaders` builds a
dict of the raw headers once, in C (``dict(reversed(raw))``: the *first* of a repeated header
wins, as it does for ``Headers.get``), and answers each lookup with one probe. Everything else
(``getlist``, ``raw``, iteration, equality) is Starlette's own.

:class:`Route` is the route every endpoint is mounted with; it hands the endpoint an
:class:`IndexedRequest` (endpoints keep their ``Request`` annotations: it is a subclass).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any, TypeVar, overload

# Starlette's own request_response uses it; so do frameworks built on Starlette.
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["IndexedHeaders", "IndexedRequest", "RepeatedCredential", "Route", "authorization"]

_T = TypeVar("_T")


#: Header names as looked up (``"MCP-Protocol-Version"``) -> as ASGI holds them
#: (``b"mcp-protocol-version"``): the names are the code's own, a few dozen.
_NAMES: dict[str, bytes] = {}
_MAX_NAMES = 512


def _name(key: str) -> bytes:
    name = key.lower().encode("latin-1")
    if len(_NAMES) < _MAX_NAMES:
        _NAMES[key] = name
    return name


class IndexedHeaders(Headers):
    """:class:`~starlette.datastructures.Headers` whose lookups are one dict probe."""

    def __init__(self, scope: MutableMapping[str, Any]) -> None:
        super().__init__(scope=scope)
        # Later pairs overwrite earlier ones, so reversed: the first of a repeated name wins.
        self._index: dict[bytes, bytes] = dict(reversed(self._list))
        #: Whether any name came more than once (rarely): :func:`authorization` looks no
        #: further when not.
        self.repeats = len(self._index) < len(self._list)

    def __getitem__(self, key: str) -> str:
        try:
            return self._index[_NAMES.get(key) or _name(key)].decode("latin-1")
        except KeyError:
            raise KeyError(key) from None

    def __contains__(self, key: Any) -> bool:
        return isinstance(key, str) and (_NAMES.get(key) or _name(key)) in self._index

    @overload
    def get(self, key: str) -> str | None: ...

    @overload
    def get(self, key: str, default: str | _T) -> str | _T: ...

    def get(self, key: str, default: Any = None) -> Any:
        value = self._index.get(_NAMES.get(key) or _name(key))
        return default if value is None else value.decode("latin-1")

    def getlist(self, key: str) -> list[str]:
        if (_NAMES.get(key) or _name(key)) not in self._index:  # the usual answer: none
            return []
        return super().getlist(key)


class RepeatedCredential(ValueError):
    """The request carries ``Authorization`` more than once."""

    def __init__(self) -> None:
        super().__init__("send one Authorization header, not several")


def authorization(headers: Headers) -> str | None:
    """The request's ``Authorization`` header, the one place its rule is kept: sent more than
    once, it is refused (:class:`RepeatedCredential`, which each door answers as
    ``invalid_request``, RFC 6750 §3.1), whichever copy is valid, never one copy picked: a
    proxy could have checked the other. The bearer doors and ``/token`` read it here. One
    attribute read decides for a request that repeats no header."""
    if (not isinstance(headers, IndexedHeaders) or headers.repeats) and len(
            headers.getlist("authorization")) > 1:
        raise RepeatedCredential
    return headers.get("authorization")


class IndexedRequest(Request):
    """Starlette's request with :class:`IndexedHeaders`."""

    @property
    def headers(self) -> Headers:
        try:
            return self._indexed_headers
        except AttributeError:
            self._indexed_headers: IndexedHeaders = IndexedHeaders(self.scope)
            return self._indexed_headers


Endpoint = Callable[[Request], Awaitable[Response]]


class Route(StarletteRoute):
    """Starlette's route for an ``async def endpoint(request)``, served with
    :class:`IndexedRequest`: exceptions go to the application's handlers as with Starlette's
    own (``request_response``). Every route of the application is one of these."""

    def __init__(self, path: str, endpoint: Endpoint, *, methods: Collection[str] | None = None,
                 name: str | None = None) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            raise TypeError(f"{endpoint!r} is not an async function")
        super().__init__(path, endpoint, methods=methods, name=name)
        self.app = _request_response(endpoint)


def _request_response(endpoint: Endpoint) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = IndexedRequest(scope, receive, send)

        async def respond(scope: Scope, receive: Receive, send: Send) -> None:
            response = await endpoint(request)
            await response(scope, receive, send)

        await wrap_app_handling_exceptions(respond, request)(scope, receive, send)

    return app
