"""Durable ingest: one received instance → object store + index, or a failure status.

Success is reported only after the object is written (fsynced / acknowledged by S3) and the
index row is committed. Each instance is parsed, validated, hashed and staged (its bytes made
durable under a temporary name) by the thread that received it; then it joins a group commit
(:mod:`gateway.ingest.group_commit`): the instances that arrive together are indexed and
published in one transaction (:mod:`gateway.ingest.indexing`), and each is answered after
that commit.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO, cast

from pydicom import Dataset, dcmread

from gateway.dimse_status import Status
from gateway.errors import DatabaseError, InvalidInstance, StorageError
from gateway.index.database import KEEP_IDLE_S, Database, KeptConnection
from gateway.index.object_store import ObjectStore, StagedObject
from gateway.index.stored_headers import parse_head
from gateway.ingest.group_commit import GroupCommit
from gateway.ingest.header import Header, read_header
from gateway.ingest.indexing import Member, write_group
from gateway.ingest.outcome import Outcome, Sender
from gateway.ingest.pixels import GEOMETRY_TAGS, check_pixel_data
from gateway.ingest.spool import HEAD_BYTES, HeadFirst, Spooled
from gateway.ingest.tags import READ_TAGS, InstanceTags, read_tags

__all__ = ["Admit", "Ingest", "Outcome", "Sender"]

log = logging.getLogger(__name__)

# A caller's own check of an instance's attributes before anything is stored (DICOMweb: the
# SOP class allowed, the study of the request's URL); it raises InvalidInstance to refuse.
Admit = Callable[[InstanceTags], None]

# A header longer than this (rare: large sequences before the pixels) is parsed from the file.
_HEADER_BYTES = HEAD_BYTES  # the spool keeps as many in memory
_WANTED = READ_TAGS | GEOMETRY_TAGS  # what _parse's callers read of a header


class Ingest:
    """Stores received instances; shared by every association (thread-safe).

    ``commit_window_ms`` bounds how long a group's leader waits for instances other threads
    are still preparing (``ingest_commit_window_ms``); 0 groups only what already waits.
    ``keep_connection``: the groups' index connection stays checked out between groups
    that follow each other (an SCP process; see
    :class:`~gateway.index.database.KeptConnection`).
    """

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        commit_window_ms: float = 0.0,
        keep_connection: bool = False,
    ) -> None:
        self.db = db
        self.store = store
        # Only the group's leader writes, one group at a time: one connection serves them
        # all, kept between groups where instances stream in (an SCP process's).
        self._writer = KeptConnection(db, KEEP_IDLE_S if keep_connection else 0.0)
        self.group: GroupCommit[Member, Outcome] = GroupCommit(
            self._write_group, commit_window_ms / 1000
        )

    def receive(
        self,
        encoded: bytes,
        sender: Sender,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
    ) -> Outcome:
        """Store one Part-10 encoded instance (file meta + dataset exactly as received)."""
        return self._receive(_Received(encoded), sender, expected_sop_class, expected_sop_instance)

    def receive_file(
        self,
        path: Path,
        sender: Sender,
        expected_sop_class: str | None = None,
        expected_sop_instance: str | None = None,
        *,
        admit: Admit | None = None,
        spooled: Spooled | None = None,
    ) -> Outcome:
        """:meth:`receive` for an instance the SCP spooled to ``path`` (a large one need not
        fit in memory); the file is read, never moved, and must stay until this returns.
        ``admit`` checks the validated attributes before anything is stored; ``spooled``:
        the file's size, digest and head as the SCP wrote it (not read again)."""
        known = spooled if spooled is not None and spooled.path == path else None
        received = _Received(path=path, spooled=known)
        return self._receive(received, sender, expected_sop_class, expected_sop_instance, admit)

    def _receive(
        self,
        received: _Received,
        sender: Sender,
        expected_sop_class: str | None,
        expected_sop_instance: str | None,
        admit: Admit | None = None,
    ) -> Outcome:
        with self.group.arriving() as ticket:
            prepared = self._prepare(
                received, sender, expected_sop_class, expected_sop_instance, admit
            )
            if isinstance(prepared, Outcome):
                return prepared
            try:
                outcome = ticket.submit(prepared)
            finally:
                self.store.discard(prepared.staged)
        if not outcome.status.is_success:
            return self._refuse(outcome.status, outcome.reason, sender, outcome.study_uid)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "instance stored",
                extra={
                    "study_uid": outcome.study_uid,
                    "sop_instance_uid": prepared.tags.sop_instance_uid,
                    "version": outcome.version,
                    "duplicate": outcome.duplicate,
                    "source": sender.source.name,
                },
            )
        return outcome

    def _prepare(
        self,
        received: _Received,
        sender: Sender,
        expected_sop_class: str | None,
        expected_sop_instance: str | None,
        admit: Admit | None,
    ) -> Member | Outcome:
        """Parse, validate, stage and hash one instance in its own thread: a member for the
        group commit, or the refusal to answer."""
        try:
            tags = read_tags(_parse(received))
            _check_matches_request(tags, expected_sop_class, expected_sop_instance)
            if admit is not None:
                admit(tags)
        except InvalidInstance as exc:
            return self._refuse(exc.status, exc.reason, sender)
        study_uid = tags.study.study_uid
        if not self.store.has_room():
            return self._refuse(
                Status.OUT_OF_RESOURCES, "object store below free-space floor", sender, study_uid
            )
        try:
            # The slow part of the write (data + fsync) is done here, before any lock, by
            # this thread; the group's transaction only gives the object its key.
            staged = received.stage(self.store)
        except StorageError as exc:
            return self._refuse(Status.OUT_OF_RESOURCES, f"object store: {exc}", sender, study_uid)
        try:
            return Member(staged, received.sha256(), tags, sender)
        except OSError as exc:  # the spooled file could not be read back
            self.store.discard(staged)
            return self._refuse(
                Status.OUT_OF_RESOURCES,
                f"spooled instance unreadable: {exc.strerror or exc}",
                sender,
                study_uid,
            )

    def _write_group(self, members: list[Member]) -> list[Outcome]:
        """One transaction for ``members``; a failure of it answers each of them."""
        try:
            outcomes = write_group(self.db, self.store, members, self._writer)
        except StorageError as exc:
            return _all_failed(members, f"object store: {exc}")
        except DatabaseError as exc:
            return _all_failed(members, f"database: {exc}")
        except OSError as exc:  # a spooled file read again for a retried transaction
            return _all_failed(members, f"spooled instance unreadable: {exc.strerror or exc}")
        if not log.isEnabledFor(logging.DEBUG):  # the index is the record of what arrived
            return outcomes
        stored = sum(1 for o in outcomes if o.status.is_success and not o.duplicate)
        log.debug(
            "instances stored",
            extra={
                "instances": stored,
                "duplicates": sum(1 for o in outcomes if o.duplicate),
                "refused": sum(1 for o in outcomes if not o.status.is_success),
                "studies": sorted({m.tags.study.study_uid for m in members}),
            },
        )
        return outcomes

    def _refuse(
        self, status: Status, reason: str, sender: Sender, study_uid: str | None = None
    ) -> Outcome:
        log.warning(
            "instance refused",
            extra={
                "status": f"0x{status:04X}",
                "reason": reason,
                "calling_ae": sender.calling_ae,
                "source": sender.source.name,
                "study_uid": study_uid,
            },
        )
        return Outcome(status, reason, study_uid)


@dataclass(frozen=True)
class _Received:
    """One received instance: its bytes in memory, or the file the SCP spooled them to."""

    data: bytes | None = None
    path: Path | None = None
    spooled: Spooled | None = None  # the spooled file's facts, taken as it was written

    def open(self) -> BinaryIO:
        if self.data is not None:
            return BytesIO(self.data)
        if self.spooled is not None:
            return cast(BinaryIO, HeadFirst(self.spooled))
        assert self.path is not None
        return open(self.path, "rb")  # the caller closes it

    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        if self.spooled is not None:
            return self.spooled.size
        assert self.path is not None
        return self.path.stat().st_size

    def sha256(self) -> str:
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        if self.spooled is not None:
            return self.spooled.sha256
        assert self.path is not None
        with open(self.path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()

    def stage(self, store: ObjectStore) -> StagedObject:
        if self.data is not None:
            return store.stage(self.data)
        assert self.path is not None
        if self.spooled is not None:
            return store.stage_file(self.path, self.spooled.size, self.spooled.sync)
        return store.stage_file(self.path)


def _parse(received: _Received) -> Header:
    try:
        with received.open() as handle:
            dataset, position = _read_header(handle)
            if isinstance(dataset, Dataset):  # pydicom parses lazily; make damage surface here
                dataset.get("StudyInstanceUID")
            check_pixel_data(handle, position, received.size(), dataset)
        return dataset
    except InvalidInstance:
        raise
    except Exception as exc:  # damaged input can raise nearly anything (zlib, struct, …)
        raise InvalidInstance(
            f"cannot parse dataset: {exc.__class__.__name__}: {_first_line(exc)}",
            Status.CANNOT_UNDERSTAND,
        ) from exc


def _read_header(handle: BinaryIO) -> tuple[Header, int]:
    """The dataset up to its Pixel Data (the elements the index and the Pixel Data check
    read, at least), and where that starts.

    Read from the first :data:`_HEADER_BYTES` when they hold the whole file or the start of
    its Pixel Data element: by :func:`read_header` where the header is plain, else by
    pydicom in memory (a file's reader asks the OS for its position at every element, and
    each such call lets other threads' GIL requests in: ~50 for a CT slice); a longer
    header, or one without Pixel Data, from the file, as before."""
    prefix = handle.read(_HEADER_BYTES)
    whole = len(prefix) < _HEADER_BYTES
    plain = read_header(prefix, whole, _WANTED)
    if plain is not None:
        return plain
    parsed = parse_head(prefix, whole)
    if parsed is not None:
        return parsed
    handle.seek(0)
    dataset = dcmread(handle, stop_before_pixels=True)
    return dataset, handle.tell()


def _check_matches_request(
    tags: InstanceTags, sop_class: str | None, sop_instance: str | None
) -> None:
    if sop_class is not None and sop_class != tags.sop_class_uid:
        raise InvalidInstance(
            f"dataset SOP Class {tags.sop_class_uid} differs from the request's {sop_class}",
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )
    if sop_instance is not None and sop_instance != tags.sop_instance_uid:
        raise InvalidInstance(
            "dataset SOP Instance UID differs from the request's",
            Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        )


def _all_failed(members: Sequence[Member], reason: str) -> list[Outcome]:
    # Nothing of the group is indexed: each sender keeps its copy and sends again (objects
    # published before a COMMIT that raised are published again under the same keys, or
    # removed by start-up recovery); acknowledged instances of earlier groups are untouched.
    return [Outcome(Status.OUT_OF_RESOURCES, reason, m.tags.study.study_uid) for m in members]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]
