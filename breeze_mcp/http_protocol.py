"""The HTTP/1.1 protocol ``breeze-mcp serve`` runs: uvicorn's httptools protocol with a bound
on the request head.

uvicorn offers two parsers. h11 is pure Python and bounds a request head at 16 KiB; httptools
(llhttp, in C) parses a request in a fraction of the instructions but has no bound at all:
uvicorn accepts megabytes of header lines and keeps them, so one client could make the server
hold as much memory as it cares to send. :class:`BoundedHttpToolsProtocol` is httptools with
h11's bound: a request line plus headers longer than :data:`MAX_HEAD_BYTES` is answered
``431 Request Header Fields Too Large`` and the connection closed, before any of it reaches
the application.

Two counts hold it, each never more than the head's true size. When a head is complete it is
measured (the request target and each header line as the parser handed them over), unless it
came whole in one read no longer than the bound, which cannot hold a longer head: the common
request pays one comparison. The parser keeps an unfinished line to itself, so the reads that
arrive while a head is incomplete are counted too, whole, from the read after the one in which
the head began (that one may also hold the end of the previous request of a kept-alive
connection): a line that never ends is refused after at most one read (256 KiB) and the bound.

It also holds RFC 9112 §3.2: an HTTP/1.1 request without a ``Host`` header, or any request
with more than one, is answered 400 and the connection closed. Two ``Host`` lines are where a
proxy and the server could each read a different one (uvicorn would hand both to the
application, which reads the first); the check is one dict built in C per request.
"""

from __future__ import annotations

from typing import Final

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["MAX_HEAD_BYTES", "BoundedHttpToolsProtocol"]

#: The longest request head (request line and headers) served: h11's default bound.
MAX_HEAD_BYTES: Final = 16 * 1024

_TOO_LARGE_TEXT: Final = f"Request header fields exceed {MAX_HEAD_BYTES} bytes.\n".encode()
_TOO_LARGE: Final = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: " + str(len(_TOO_LARGE_TEXT)).encode() + b"\r\n"
    b"connection: close\r\n"
    b"\r\n" + _TOO_LARGE_TEXT
)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a head refused before the application."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """httptools, refusing a request head longer than :data:`MAX_HEAD_BYTES`."""

    _read = 0  # length of the read being parsed
    _in_head = False  # between a message's first byte and the end of its headers
    _head_began = False  # ... and that message began in the read being parsed
    _later_reads = 0  # bytes of the reads since the one in which the head began
    _too_large = False
    _host_refusal = ""  # why the head's Host lines are refused (400)

    def data_received(self, data: bytes) -> None:
        self._read = len(data)
        self._head_began = False
        super().data_received(data)
        if not self._in_head or self._head_began or self.transport.is_closing():
            return
        # Still inside a head that began in an earlier read: a line the parser keeps
        # unfinished grows with every read, unseen by the callbacks.
        self._later_reads += len(data)
        if self._later_reads > MAX_HEAD_BYTES:
            self._too_large = True
            self.send_400_response("")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = self._head_began = True
        self._later_reads = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        # A head read whole in one read no longer than the bound is within it: the common
        # case costs one comparison. Any other head is measured.
        if (self._read > MAX_HEAD_BYTES or not self._head_began) and self._head_size(
                ) > MAX_HEAD_BYTES:
            self._too_large = True
            raise _Refused  # the parser stops; uvicorn answers with send_400_response
        if not self._one_host():
            raise _Refused
        super().on_headers_complete()

    def _one_host(self) -> bool:
        """Whether the head has exactly one ``Host`` line (or, in HTTP/1.0, none); else
        :attr:`_host_refusal` says why not."""
        names = dict(self.headers)  # ASGI names: lower case
        if len(names) == len(self.headers):  # no name repeated: the common request
            hosts = int(b"host" in names)
        else:
            hosts = sum(name == b"host" for name, _ in self.headers)
        if hosts == 1 or (hosts == 0 and self.parser.get_http_version() == "1.0"):
            return True
        self._host_refusal = ("A Host header is required.\n" if hosts == 0
                              else "A request may carry one Host header, not several.\n")
        return False

    def _head_size(self) -> int:
        """The request target and header lines as they came (each ``name: value`` CRLF)."""
        return len(self.url) + sum([len(n) + len(v) + 4 for n, v in self.headers])

    def send_400_response(self, msg: str) -> None:
        if self._host_refusal:
            self.logger.warning("Request refused: %s", self._host_refusal.strip())
            super().send_400_response(self._host_refusal)
            return
        if not self._too_large:
            super().send_400_response(msg)
            return
        self.logger.warning("Request head over %d bytes refused.", MAX_HEAD_BYTES)
        self.transport.write(_TOO_LARGE)
        self.transport.close()
