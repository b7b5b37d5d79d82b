"""``multipart/related`` in and out (RFC 2387, PS3.18 8.6.1.2).

In: a STOW-RS body is parsed as it arrives (python-multipart's streaming parser) and each
part written to its own file in a spool folder, so memory per request is a chunk, never an
instance. The body is bounded as a whole (``stow_max_bytes``), each part too
(``max_instance_bytes``: a larger part is drained, not spooled, and fails alone), and the
number of parts; the parser itself bounds the count and size of each part's headers.

Out: WADO-RS answers are generated part by part, each part read from the object store when
its turn comes.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

MAX_PARTS = 10_000


class BadMultipart(ValueError):
    """The body is not a readable multipart/related message (400)."""


class BodyTooLarge(ValueError):
    """The body is over ``stow_max_bytes`` (413)."""


@dataclass(frozen=True)
class MediaType:
    """A parsed ``Content-Type`` or ``Accept`` entry: ``type/subtype`` and its parameters
    (names lower-cased, values unquoted)."""

    value: str
    params: dict[str, str] = field(default_factory=dict)


def parse_media_type(text: str) -> MediaType:
    value, params = parse_options_header(text[:1000])
    return MediaType(
        value.decode("latin-1").strip().lower(),
        {key.decode("latin-1").lower(): raw.decode("latin-1") for key, raw in params.items()},
    )


@dataclass
class Part:
    """One spooled part: its declared media type and its file (None when it was over the
    part limit and drained)."""

    media_type: MediaType
    path: Path | None
    size: int = 0

    @property
    def over_limit(self) -> bool:
        return self.path is None


@dataclass
class _Spooler:
    """python-multipart's callbacks: headers gathered per part, data to the part's file."""

    folder: Path
    max_part: int
    parts: list[Part] = field(default_factory=list)
    ended: bool = False
    _field: bytearray = field(default_factory=bytearray)
    _value: bytearray = field(default_factory=bytearray)
    _headers: dict[str, str] = field(default_factory=dict)
    _file: BinaryIO | None = None
    _current: Part | None = None

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise BadMultipart(f"more than {MAX_PARTS} parts")
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field.extend(data[start:end])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value.extend(data[start:end])

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        media = parse_media_type(self._headers.get("content-type", ""))
        path = self.folder / f"part-{len(self.parts):05d}"
        self._current = Part(media, path)
        self.parts.append(self._current)
        self._file = open(path, "wb")  # noqa: SIM115 - closed at the part's end or close()

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._current
        if part is None:
            raise BadMultipart("part data before its headers")
        part.size += end - start
        if part.size > self.max_part:
            self._drop()
        elif self._file is not None:
            self._file.write(data[start:end])

    def _drop(self) -> None:
        """Over the part limit: the part's file goes, its remaining data is counted only."""
        if self._file is not None and self._current is not None:
            self._file.close()
            self._file = None
            if self._current.path is not None:
                self._current.path.unlink(missing_ok=True)
            self._current.path = None

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._current = None

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def spool_parts(
    chunks: AsyncIterator[bytes],
    boundary: str,
    folder: Path,
    *,
    max_body: int,
    max_part: int,
) -> list[Part]:
    """Every part of the body in its own file under ``folder`` (which the caller removes)."""
    if not 1 <= len(boundary) <= 70:  # RFC 2046 5.1.1
        raise BadMultipart("the boundary parameter must be 1 to 70 characters")
    spooler = _Spooler(folder, max_part)
    parser = MultipartParser(boundary.encode("latin-1"), spooler.callbacks())
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > max_body:
                raise BodyTooLarge(f"body over the limit of {max_body} bytes (stow_max_bytes)")
            parser.write(chunk)
    except MultipartParseError as exc:
        raise BadMultipart(f"not a readable multipart body: {exc}") from exc
    finally:
        spooler.close()
    if not spooler.ended:
        raise BadMultipart("the body ends before the closing boundary")
    return spooler.parts


def new_boundary() -> str:
    return f"aigw-{secrets.token_hex(16)}"


def multipart_body(
    boundary: str, media_type: str, parts: Iterable[Callable[[], Iterable[bytes]]]
) -> Iterator[bytes]:
    """The parts of a ``multipart/related`` answer, each opened only when its turn comes
    and passed on a chunk at a time."""
    head = f"--{boundary}\r\nContent-Type: {media_type}\r\n\r\n".encode("ascii")
    for open_part in parts:
        chunks = open_part()  # opened before its head is sent: a failure ends between parts
        yield head
        yield from chunks
        del chunks  # an object read ahead is not held while the next part is opened
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")
