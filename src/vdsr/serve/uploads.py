"""One uploaded file, read from a ``multipart/form-data`` request body in memory, within limits.

Why not Starlette's form parser: it reads the whole body before any limit applies and spools
files over 1 MB to a temporary file on disk. This reader refuses a body whose ``Content-Length``
is over the limit before reading a byte of it, stops reading a chunked body as soon as it passes
the limit, gives up on a body that stops arriving, and writes nothing to disk.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# Bytes of a body allowed beside the file itself: boundaries, part headers, small form fields.
FORM_OVERHEAD = 64 * 1024

Receive = Callable[[], Awaitable[Mapping[str, Any]]]


class RequestRefused(Exception):
    """The request cannot be served as sent.

    Attributes:
        status: the HTTP status to answer with (400, 408, 413).
        message: one line for people.
        unread: part of the body was left unread, so the connection must be closed after the
            answer (or the server would go on receiving it).
    """

    def __init__(self, status: int, message: str, unread: bool = False) -> None:
        self.status, self.message, self.unread = status, message, unread
        super().__init__(message)


class ClientGone(Exception):
    """The client disconnected before its request was complete."""


@dataclass(frozen=True)
class Upload:
    """The file part of a form: ``filename`` as the client sent it (``None`` if it sent none)."""

    filename: str | None
    data: bytes


def display_name(filename: str | None) -> str:
    """An upload's base name as messages and downloads show it: no folders, no control characters."""
    name = Path(filename or "").name
    name = "".join("_" if unicodedata.category(c) == "Cc" else c for c in name)
    return name or "upload"


@dataclass(frozen=True)
class BodyLimits:
    """How much, and how slowly, a request body may arrive."""

    max_file_bytes: int
    idle_seconds: float = 30.0  # the longest wait for the next piece of the body
    total_seconds: float = 300.0  # the whole body

    @property
    def max_body_bytes(self) -> int:
        return self.max_file_bytes + FORM_OVERHEAD


async def read_upload(receive: Receive, headers: Mapping[str, str], field: str,
                      limits: BodyLimits) -> Upload:
    """Read the body through ASGI ``receive`` and return its one part named ``field``.

    Raises :class:`RequestRefused` (not a multipart form, no or two ``field`` parts, too large,
    too slow) or :class:`ClientGone`.
    """
    declared = headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestRefused(400, f"Content-Length {declared!r} is not a number", unread=True)
    unread = declared != "0"  # refused before reading: the connection is closed after the answer
    if declared is not None and int(declared) > limits.max_body_bytes:
        raise RequestRefused(413, f"upload of {int(declared):,} bytes is larger than the limit "
                                  f"of {limits.max_file_bytes:,} bytes", unread=True)
    content_type, options = parse_options_header(headers.get("content-type"))
    if content_type != b"multipart/form-data":
        raise RequestRefused(400, f"expected a multipart/form-data upload with the image in the "
                                  f"field {field!r}", unread=unread)
    boundary = options.get(b"boundary")
    if not boundary:
        raise RequestRefused(400, "the multipart/form-data upload has no boundary", unread=unread)
    form = _Form(field, limits.max_file_bytes)
    parser = MultipartParser(boundary, form.callbacks())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.total_seconds
    received, more = 0, True
    try:
        while more:
            wait = min(limits.idle_seconds, deadline - loop.time())
            try:
                if wait <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), wait)
            except asyncio.TimeoutError:
                raise RequestRefused(408, f"the upload arrived too slowly (after {received:,} "
                                          "bytes); send it again", unread=True) from None
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise RequestRefused(413, f"upload is larger than the limit of "
                                          f"{limits.max_file_bytes:,} bytes", unread=True)
            parser.write(chunk)
            more = bool(message.get("more_body", False))
        parser.finalize()
    except FormParserError as exc:
        raise RequestRefused(400, f"malformed multipart/form-data upload ({exc})", unread=more) from None
    except RequestRefused as exc:  # from the form's callbacks: the rest of the body is unread
        exc.unread = exc.unread or more
        raise
    return form.upload()


class _Form:
    """Callbacks for python-multipart's streaming parser: keeps the ``field`` part in memory."""

    def __init__(self, field: str, max_bytes: int) -> None:
        self.field, self.max_bytes = field, max_bytes
        self.filename: str | None = None
        self.data: bytearray | None = None  # the field's bytes once its part has begun
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._in_field = False

    def callbacks(self) -> MultipartCallbacks:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value_piece, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data}

    def upload(self) -> Upload:
        if self.data is None:
            raise RequestRefused(400, f"no file in the upload: send the image as the form field "
                                      f"{self.field!r}")
        return Upload(self.filename, bytes(self.data))

    def _part_begin(self) -> None:
        self._disposition, self._in_field = b"", False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_piece(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name", b"").decode("utf-8", "replace") != self.field:
            return  # another form field: read past, counted against the body limit only
        if self.data is not None:
            raise RequestRefused(400, f"the upload has more than one {self.field!r} field: send "
                                      "one image per request")
        self._in_field = True
        self.data = bytearray()
        raw = options.get(b"filename")
        self.filename = None if raw is None else raw.decode("utf-8", "replace")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_field or self.data is None:
            return
        self.data += data[start:end]
        if len(self.data) > self.max_bytes:
            raise RequestRefused(413, f"{display_name(self.filename)}: file is larger than the limit of "
                                      f"{self.max_bytes:,} bytes")
