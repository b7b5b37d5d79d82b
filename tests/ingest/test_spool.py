"""Where the SCP spools a received dataset: in the folder store's staging folder, so that
staging links the file into the store instead of copying it whatever $TMPDIR is; a crash's
leftovers there are removed at start-up."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from gateway.index import durable_files
from gateway.index.object_store import FolderStore
from gateway.ingest.receive import Ingest
from gateway.settings import Settings
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
    spooled: list[Path] = []
    receive_file = Ingest.receive_file

    def spy(self: Ingest, path: Path, *args: Any, **kwargs: Any) -> Any:
        spooled.append(path)
        return receive_file(self, path, *args, **kwargs)

    monkeypatch.setattr(Ingest, "receive_file", spy)
    gateway = start_gateway(make_settings())
    store = gateway.parts.store
    assert isinstance(store, FolderStore)
    study = make_uid("spool")
    instance = ct_instance(study, make_uid(study, "s"), make_uid(study, "i"), size=64)
    ae = AE("IRK_CAMI")
    ae.add_requested_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", gateway.parts.settings.dicom_port, ae_title="AIGW")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(instance).Status) == 0x0000
    finally:
        assoc.release()
    (path,) = spooled
    assert path.parent == store.root / "staging" and path.name.endswith(".partial")
    assert copies == []  # linked into staging: the same file system
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
