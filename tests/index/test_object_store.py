"""UIDs and object keys (nothing that is not a UID becomes a path), and the folder store:
atomic writes, partial writes after a crash, failures as StorageError."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from gateway.errors import StorageError
from gateway.index import durable_files
from gateway.index.object_store import FolderStore, check_key, instance_key
from gateway.uids import is_valid_uid
from tests.services import ROOT

SOURCES = ROOT / "gateway" / "configs" / "sources.yaml"
REGIONS = ROOT / "gateway" / "configs" / "regions.yaml"


# --- UIDs and object keys --------------------------------------------------------------------

GOOD_UIDS = ["1", "1.2", "1.2.840.10008.5.1.4.1.1.2", "0.0", "1.02.3", "1." + "2" * 62]
BAD_UIDS = [
    "",
    ".",
    "..",
    "1.",
    ".1",
    "1..2",
    "1.2.3/../../x",
    "../../etc/passwd",
    "1.2.3a",
    "1.2 ",
    " 1.2",
    "1.2\x00",
    "1\\2",
    "1.2/3",
    "１.２",
    "1." + "2" * 63,
    "-1.2",
    "+1",
]


@pytest.mark.parametrize("uid", GOOD_UIDS)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)
    assert instance_key(uid, uid, uid) == f"studies/{uid}/{uid}/{uid}.dcm"
    assert check_key(instance_key(uid, uid, uid, version=3)).endswith(f"/{uid}.v3.dcm")


@pytest.mark.parametrize("uid", BAD_UIDS)
def test_invalid_uids_never_make_a_key(uid: str) -> None:
    assert not is_valid_uid(uid)
    good = "1.2.3"
    for args in ((uid, good, good), (good, uid, good), (good, good, uid)):
        with pytest.raises(ValueError, match="not a valid DICOM UID"):
            instance_key(*args)


def test_non_strings_are_not_uids() -> None:
    assert not any(is_valid_uid(value) for value in (None, 12, 1.2, b"1.2", ["1.2"]))


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "studies/../../etc/passwd",
        "studies/1/../2",
        "/etc/passwd",
        "studies//1",
        "studies/1/",
        "",
        ".",
        "studies/.hidden",
        "studies/1.dcm.partial",
        "studies\\..\\x",
        "studies/1 2",
        "studies/ü",
        "studies/1\x00",
    ],
)
def test_unsafe_keys_are_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsafe object key"):
        check_key(key)
    store = FolderStore(tmp_path / "objects")
    with pytest.raises(ValueError, match="unsafe object key"):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    assert list(tmp_path.rglob("*")) == [tmp_path / "objects"]


# --- the folder store ------------------------------------------------------------------------


def test_folder_store_round_trip(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "objects")
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    assert not store.exists(key)
    store.put(key, b"first")
    assert store.exists(key) and store.get(key) == b"first"
    assert (tmp_path / "objects" / key).read_bytes() == b"first"
    store.put(key, b"second")  # replaced atomically
    assert store.get(key) == b"second"
    other = instance_key("1.2", "1.2.3", "1.2.3.5", version=2)
    store.put(other, b"")
    assert sorted(store.keys()) == sorted([key, other])
    assert sorted(store.keys("studies/1.2/1.2.3/")) == sorted([key, other])
    store.put(instance_key("1.2", "1.2.30", "1.2.30.1"), b"")
    assert len(list(store.keys("studies/1.2/1.2.3"))) == 2  # a folder, not a string prefix
    store.delete(instance_key("1.2", "1.2.30", "1.2.30.1"))
    assert list(store.keys("studies/9")) == []
    store.delete(key)
    store.delete(key)  # absent: not an error
    assert not store.exists(key) and list(store.keys()) == [other]
    with pytest.raises(StorageError, match="cannot read"):
        store.get(key)
    with pytest.raises(StorageError, match="cannot read"):
        store.read_chunks(key)  # at once, before a first chunk is asked for
    assert list(store.read_chunks(other)) == []
    store.put(key, b"0123456789")
    assert list(store.read_chunks(key, chunk=4)) == [b"0123", b"4567", b"89"]
    store.delete(key)
    assert store.describe() == f"folder {(tmp_path / 'objects').resolve()}"


def test_folder_store_maps_an_object_read_only(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "objects")
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    store.put(key, b"mapped bytes")
    mapped = store.map(key)
    assert bytes(mapped) == b"mapped bytes"
    with pytest.raises(TypeError):  # read-only: the decoders cannot change a stored object
        mapped[0:1] = b"M"  # type: ignore[index]
    store.put(key, b"replaced")  # a new file renamed into place: the map keeps the old one
    assert bytes(mapped) == b"mapped bytes" and bytes(store.map(key)) == b"replaced"
    empty = instance_key("1.2", "1.2.3", "1.2.3.5")
    store.put(empty, b"")
    assert store.map(empty) == b""  # an empty file cannot be mapped: read
    with pytest.raises(StorageError, match="cannot read"):
        store.map(instance_key("1.2", "1.2.3", "1.2.3.6"))


def test_folder_store_partial_writes(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "objects")
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    store.put(key, b"kept")
    folder = (tmp_path / "objects" / key).parent
    temps = [folder / ".1.2.3.9.dcm.abc.partial", tmp_path / "objects" / "x.partial"]
    for temp in temps:
        temp.write_bytes(b"half")
    assert list(store.keys()) == [key]  # temp files are not objects
    assert store.remove_partial_writes() == 2
    assert not any(temp.exists() for temp in temps)
    assert store.get(key) == b"kept"
    assert store.remove_partial_writes() == 0


def test_folder_store_failures(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FolderStore(root)
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    store.put(key, b"x")
    (root / "studies" / "1.2" / "1.2.4").write_bytes(b"a file where a folder should be")
    with pytest.raises(StorageError, match="cannot write"):
        store.put(instance_key("1.2", "1.2.4", "1.2.4.1"), b"y")
    assert not list(root.rglob("*.partial"))
    store.check()
    assert store.has_room()
    assert not FolderStore(root, min_free_bytes=shutil.disk_usage(root).free + 2**40).has_room()
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="cannot create"):
        FolderStore(blocker / "objects")


def test_free_space_is_read_again_before_any_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # statfs is not made per instance while far above the floor; what was staged since the
    # reading counts against it; any answer below the floor comes from a fresh reading.
    free = [10_000]
    readings: list[int] = []
    now = [1000.0]  # the clock stands still unless the test moves it: no fsync ages a reading
    monkeypatch.setattr(time, "monotonic", lambda: now[0])

    def disk_usage(path: Path) -> shutil._ntuple_diskusage:
        readings.append(free[0])
        return shutil._ntuple_diskusage(20_000, 20_000 - free[0], free[0])

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    store = FolderStore(tmp_path / "objects", min_free_bytes=4_000)
    assert store.has_room() and store.has_room() and store.has_room()
    assert len(readings) == 1
    spool = tmp_path / "spooled.partial"
    spool.write_bytes(b"x" * 5_000)
    store.stage_file(spool)  # 10 000 - 5 000 staged: still above 4 000, no new reading
    assert store.has_room() and len(readings) == 1
    store.stage_file(spool)  # the estimate is 0 now: read again, and the disk says 10 000
    assert store.has_room() and len(readings) == 2
    free[0] = 3_000  # another writer filled the disk: within the reading's life, unseen
    assert store.has_room() and len(readings) == 2
    store.min_free_bytes = 12_000  # above the estimate: a fresh reading decides, and refuses
    assert not store.has_room() and readings[-1] == 3_000
    assert not store.has_room() and len(readings) == 4  # and every refusal reads again
    now[0] += 0.3  # the reading has aged
    free[0] = 50_000
    assert store.has_room() and len(readings) == 5


def test_a_spooled_file_is_staged_by_a_link_and_synced_through_its_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FolderStore(tmp_path / "objects")
    folder = store.spool_folder()
    assert folder is not None
    spool = folder / "received.partial"
    fd = os.open(spool, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    synced: list[int] = []

    def sync() -> None:
        synced.append(fd)
        os.fsync(fd)

    def no_open(path: Path) -> None:
        raise AssertionError(f"opened {path} again to sync it")

    monkeypatch.setattr(durable_files, "fsync_file", no_open)
    try:
        os.write(fd, b"instance bytes")
        staged = store.stage_file(spool, size=14, sync=sync)
    finally:
        os.close(fd)
    assert synced == [fd] and staged.size == 14
    assert staged.temp is not None and staged.temp.samefile(spool)  # a link, not a copy
    monkeypatch.undo()
    folder.rename(tmp_path / "gone")  # staging removed under a running store: made again
    moved = tmp_path / "gone" / "received.partial"
    staged = store.stage_file(moved)
    assert staged.temp is not None and staged.temp.parent == folder and staged.size == 14
    store.publish_group([(staged, instance_key("1.2", "1.2.3", "1.2.3.4"))])
    assert store.get(instance_key("1.2", "1.2.3", "1.2.3.4")) == b"instance bytes"
