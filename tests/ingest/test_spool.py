"""Where the SCP spools a received dataset: in the folder store's staging folder, so that
staging links the file into the store instead of copying it whatever $TMPDIR is; a crash's
leftovers there are removed at start-up. What ingest reads of the file — size, SHA-256,
header — is taken as it is written, and matches the file."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import os
import tempfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu import P_DATA_TF

from gateway.index import durable_files
from gateway.index.object_store import FolderStore
from gateway.ingest.receive import Ingest
from gateway.ingest.spool import HEAD_BYTES, HeadFirst, Spooled, SpoolFile
from gateway.settings import Settings
from pacs_adapters.requestor import associate
from tests.ingest.edge_peers import wait_until
from tests.services import CT_IMAGE_STORAGE, ct_instance, make_uid
from workers.serve import Gateway


def test_a_received_dataset_is_spooled_in_the_store_and_linked_not_copied(
    make_settings: Callable[..., Settings],
    start_gateway: Callable[[Settings], Gateway],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere = tmp_path / "tmpdir"  # $TMPDIR, which may be on another file system
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    copies: list[Path] = []

    def copied(source: Path, target: Path) -> None:
        copies.append(source)

    monkeypatch.setattr(durable_files, "copy_synced", copied)
    reopened: list[Path] = []  # synced through the spool's own descriptor, not opened again
    monkeypatch.setattr(durable_files, "fsync_file", reopened.append)
    spooled: list[Path] = []
    facts: list[Spooled] = []
    receive_file = Ingest.receive_file

    def spy(self: Ingest, path: Path, *args: Any, **kwargs: Any) -> Any:
        spooled.append(path)
        facts.append(kwargs["spooled"])
        content = path.read_bytes()
        assert kwargs["spooled"] == Spooled(
            path, len(content), hashlib.sha256(content).hexdigest(), content[:HEAD_BYTES]
        )
        return receive_file(self, path, *args, **kwargs)

    monkeypatch.setattr(Ingest, "receive_file", spy)
    gateway = start_gateway(make_settings())
    store = gateway.parts.store
    assert isinstance(store, FolderStore)
    instance, assoc = _ct_and_an_association(gateway, "spool")
    try:
        assert int(assoc.send_c_store(instance).Status) == 0x0000
    finally:
        assoc.release()
    (path,) = spooled
    assert facts[0].size > HEAD_BYTES  # 256² pixels and the header: the head is a part
    assert path.parent == store.root / "staging" and path.name.endswith(".partial")
    assert copies == []  # linked into staging: the same file system
    assert reopened == []
    assert list(elsewhere.iterdir()) == []
    assert list((store.root / "staging").iterdir()) == []  # spool removed, object published
    assert len(list(store.keys("studies/"))) == 1


def test_a_spool_file_left_by_a_crash_is_removed_at_start_up(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "store")
    folder = store.spool_folder()
    assert folder is not None
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".partial", delete=False) as left:
        left.write(b"half an instance")
    assert store.remove_partial_writes() == 1
    assert not Path(left.name).exists()


def test_the_spool_counts_hashes_and_keeps_the_head_of_what_is_written(tmp_path: Path) -> None:
    chunks = [b"m" * 300, bytes(range(256)) * 200, b"z" * (HEAD_BYTES * 2)]
    spool = SpoolFile(tmp_path)
    for chunk in chunks:
        with memoryview(chunk) as view:
            spool.write(view)
    facts = spool.spooled()
    spool.close()
    content = b"".join(chunks)
    assert Path(spool.name).read_bytes() == content
    assert facts == Spooled(
        Path(spool.name), len(content), hashlib.sha256(content).hexdigest(), content[:HEAD_BYTES]
    )
    assert Path(spool.name).parent == tmp_path and spool.name.endswith(".partial")


def test_reads_inside_the_head_never_open_the_file(tmp_path: Path) -> None:
    content = bytes(range(256)) * 1024  # 256 KiB
    path = tmp_path / "gone.partial"
    facts = Spooled(path, len(content), "", content[:HEAD_BYTES])
    reader = HeadFirst(facts)  # the file does not exist: any open would raise
    assert reader.read(HEAD_BYTES) == content[:HEAD_BYTES]
    reader.seek(1000)
    assert reader.read(12) == content[1000:1012] and reader.tell() == 1012
    assert reader.seek(-4, 2) == len(content) - 4
    with pytest.raises(FileNotFoundError):
        reader.read(4)  # past the head: the file
    path.write_bytes(content)
    assert reader.read(4) == content[-4:] and reader.read(4) == b""
    reader.seek(HEAD_BYTES - 2)
    assert reader.read(4) == content[HEAD_BYTES - 2 : HEAD_BYTES + 2]  # across the end
    reader.close()


def test_a_file_shorter_than_the_head_is_read_whole_from_memory(tmp_path: Path) -> None:
    content = b"short instance"
    reader = HeadFirst(Spooled(tmp_path / "absent", len(content), "", content))
    assert reader.read(HEAD_BYTES) == content and reader.read(10) == b""


def test_a_store_folder_that_cannot_be_written_spools_to_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The store gone (its folder a file now): the association goes on, the dataset is
    # spooled in $TMPDIR and staging refuses it with the reason (tests/system/test_faults).
    elsewhere = tmp_path / "tmpdir"
    elsewhere.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
    not_a_folder = tmp_path / "staging"
    not_a_folder.write_bytes(b"")
    spool = SpoolFile(not_a_folder)
    spool.write(b"data")
    spool.close()
    assert Path(spool.name).parent == elsewhere and Path(spool.name).read_bytes() == b"data"


def test_spool_names_differ_between_a_process_and_its_forked_child(tmp_path: Path) -> None:
    # A forked child (the pools' fork servers; the SCP processes are spawned) counting on
    # from its parent's prefix and counter would draw the parent's next names (O_EXCL would
    # refuse each, and its datasets would go to $TMPDIR and be copied into the store).
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: draw one name, hand it over, leave at once
        os.write(write, _drawn(tmp_path).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = pipe.read().decode()
    parent = [_drawn(tmp_path) for _ in range(2)]
    assert len({child, *parent}) == 3
    assert child[:16] != parent[0][:16] and parent[0][:16] == parent[1][:16]  # own prefix


def _drawn(folder: Path) -> str:
    spool = SpoolFile(folder)
    spool.close()
    return Path(spool.name).name


def test_a_dataset_cut_short_by_an_abort_leaves_neither_its_file_nor_a_descriptor(
    make_settings: Callable[..., Settings], start_gateway: Callable[[Settings], Gateway]
) -> None:
    # pynetdicom closes and removes a spool only after the C-STORE handler; a dataset the
    # peer aborts halfway never gets there. Its SpoolFile is dropped with the association.
    gateway = start_gateway(make_settings())
    store = gateway.parts.store
    assert isinstance(store, FolderStore)
    staging = store.root / "staging"
    instance, assoc = _ct_and_an_association(gateway, "cut-short")
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CT_IMAGE_STORAGE
    request.AffectedSOPInstanceUID = instance.SOPInstanceUID
    request.Priority = 2
    dataset = encode(instance, False, True)
    context_id = assoc.accepted_contexts[0].context_id
    assert dataset is not None and context_id is not None
    request.DataSet = BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdus = message.encode_msg(context_id, 16384)
    raw = assoc.dul.socket.socket  # type: ignore[union-attr]
    assert raw is not None
    for primitive in itertools.islice(pdus, 2):  # the command set and one of ~9 fragments
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        raw.sendall(pdu.encode())
    assert wait_until(lambda: _spooled_parts(staging) != ([], []))
    assoc.abort()
    assert wait_until(lambda: gc.collect() >= 0 and _spooled_parts(staging) == ([], []))
    assert list(store.keys("studies/")) == []


def _spooled_parts(staging: Path) -> tuple[list[Path], list[str]]:
    """Spool files in ``staging``, and this process's descriptors open on one."""
    files = sorted(staging.glob("*.partial"))
    descriptors = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since it was listed
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(staging)) and ".partial" in target:
                descriptors.append(target)
    return files, descriptors


def _ct_and_an_association(gateway: Gateway, label: str) -> tuple[Dataset, Association]:
    """A 256² CT instance of a new study, and an association to ``gateway`` to send it on."""
    study = make_uid(label)
    instance = ct_instance(study, make_uid(study, "s"), make_uid(study, "i"), size=256)
    ae = AE("IRK_CAMI")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = associate(ae, "127.0.0.1", gateway.parts.settings.dicom_port, ae_title="AIGW")
    assert assoc.is_established
    return instance, assoc
