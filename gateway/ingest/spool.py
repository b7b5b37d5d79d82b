"""A received C-STORE dataset's spool file, and what ingest reads of it, taken on the way in.

pynetdicom writes each P-DATA fragment of a C-STORE dataset to a temporary file (a large
instance must not be held in memory). Ingest then needed the file's size, its SHA-256 and
its header: a stat, a second read of every byte and an open and read of the first 64 KiB,
each system call a hand-off of the GIL between the association's threads (~38 context
switches per instance at four associations). The fragments pass through memory once anyway,
so :class:`SpoolFile` counts, hashes and keeps the first :data:`HEAD_BYTES` of them as they
are written, :class:`Spooled` carries that to ingest, and :class:`HeadFirst` reads the
header from it without opening the file. The file starts with :func:`file_meta`, written
directly (pynetdicom's pydicom writer cost ~0.4 ms an instance). The file is a bare
descriptor, written unbuffered (the fragments are large) and named by
:func:`~gateway.index.durable_files.temp_name`: :mod:`tempfile`'s wrapper cost five system
calls a file (``getpid``, ``fstat``, ``ioctl``, ``lseek``s) and a Python call per write, and
the store fsyncs the data through the same descriptor (:meth:`SpoolFile.sync`) rather than
opening the file again. pynetdicom closes and removes the file after the C-STORE handler; a
dataset that never reaches it (the association aborted mid-dataset, a request left queued at
an abort) is closed and removed when its :class:`SpoolFile` is collected, so that an
association cut short costs neither a descriptor nor the disk its part took.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tempfile
import weakref
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from gateway.index.durable_files import temp_name

HEAD_BYTES = 64 * 1024  # gateway.ingest.receive parses a header from this many bytes


def uid_bytes(value: str) -> bytes:
    """A UI value's bytes, padded to even length with a NUL."""
    # latin-1, as pydicom decoded the command set's UI values and pynetdicom's writer
    # encodes them: a malformed UID (non-ASCII) is written back byte for byte and refused
    # by the C-STORE handler's checks, rather than raising here and dropping the association.
    data = value.encode("latin-1")
    return data + b"\0" if len(data) % 2 else data


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    # Group 0002, Explicit VR Little Endian: 2-byte lengths, except OB's 4.
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 2, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, element, vr, len(value)) + value


_VERSION = _explicit(0x0001, b"OB", b"\x00\x01")
_IMPLEMENTATION = _explicit(0x0012, b"UI", uid_bytes(PYNETDICOM_IMPLEMENTATION_UID)) + _explicit(
    0x0013,
    b"SH",
    PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    + (b" " if len(PYNETDICOM_IMPLEMENTATION_VERSION) % 2 else b""),
)


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information, as pynetdicom writes them at the
    head of a spooled C-STORE dataset."""
    group = b"".join(
        (
            _VERSION,
            _explicit(0x0002, b"UI", uid_bytes(sop_class_uid)),
            _explicit(0x0003, b"UI", uid_bytes(sop_instance_uid)),
            _explicit(0x0010, b"UI", uid_bytes(transfer_syntax)),
            _IMPLEMENTATION,
        )
    )
    length = _explicit(0x0000, b"UL", struct.pack("<I", len(group)))
    return b"\0" * 128 + b"DICM" + length + group


@dataclass(frozen=True)
class Spooled:
    """A spooled dataset: where it is, how long it is, its SHA-256 (hex) and its first
    bytes (at most :data:`HEAD_BYTES`); ``sync`` makes the data durable through the
    spool's own descriptor (it raises once the spool is closed, after the handler)."""

    path: Path
    size: int
    sha256: str
    head: bytes
    sync: Callable[[], None] | None = field(default=None, compare=False)


class SpoolFile:
    """A spool file being written (pynetdicom's SCP closes and removes it after the
    handler), with its size, digest and head kept as the bytes go by."""

    def __init__(self, folder: Path | None) -> None:
        self._fd, self.name = _create(folder)
        self._abandoned = weakref.finalize(self, _abandon, self._fd, self.name)
        self._digest = hashlib.sha256()
        self._size = 0
        self._head = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        written = os.write(self._fd, data)
        if written < len(data):  # a regular file takes all, short of an error; still
            with memoryview(data) as view:
                while written < len(view):
                    written += os.write(self._fd, view[written:])
        self._digest.update(data)
        self._size += len(data)
        if len(self._head) < HEAD_BYTES:
            self._head += data[: HEAD_BYTES - len(self._head)]

    def sync(self) -> None:
        """The data written so far made durable (``ValueError`` once closed: a descriptor
        number is never used after it may have been given to another file)."""
        if self._fd < 0:
            raise ValueError(f"spool file {self.name} is closed")
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            self._abandoned.detach()  # closed here, removed by pynetdicom after the handler
            fd, self._fd = self._fd, -1
            os.close(fd)

    def spooled(self) -> Spooled:
        """What has been written so far."""
        head = bytes(self._head)
        return Spooled(Path(self.name), self._size, self._digest.hexdigest(), head, self.sync)


def _abandon(fd: int, name: str) -> None:
    # A spool nobody closed: its dataset never reached the handler, so nothing refers to
    # the file (a staged link is another name, made only by the handler).
    with suppress(OSError):
        os.close(fd)
    with suppress(OSError):
        os.unlink(name)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _create(folder: Path | None) -> tuple[int, str]:
    """A new spool file, its descriptor and name (``.partial``: what a crash leaves in the
    object store is removed at start-up). A store that cannot be written now (gone, full)
    must not cost the association: the dataset goes to $TMPDIR, and staging refuses it with
    the reason, instance by instance."""
    try:
        return _exclusive(str(folder) if folder is not None else tempfile.gettempdir())
    except OSError:
        if folder is None:
            raise
        return _exclusive(tempfile.gettempdir())


def _exclusive(folder: str) -> tuple[int, str]:
    # temp_name is unique to this process; O_EXCL still refuses rather than truncates.
    name = os.path.join(folder, temp_name(".partial"))
    return os.open(name, _CREATE, 0o600), name


class HeadFirst(io.RawIOBase):
    """A spooled dataset read from its kept head while the reads fall inside it; the file
    is opened only for what lies past (an encapsulated image's items, a long header)."""

    def __init__(self, spooled: Spooled) -> None:
        super().__init__()
        self._spooled = spooled
        self._position = 0
        self._file: BinaryIO | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._spooled.size}
        self._position = max(0, base[whence] + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        head = self._spooled.head
        if self._position + len(view) <= len(head) or len(head) == self._spooled.size:
            part = head[self._position : self._position + len(view)]
            view[: len(part)] = part
        else:
            if self._file is None:
                self._file = open(self._spooled.path, "rb")  # noqa: SIM115  closed in close()
            self._file.seek(self._position)
            part = self._file.read(len(view))
            view[: len(part)] = part
        self._position += len(part)
        return len(part)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()
