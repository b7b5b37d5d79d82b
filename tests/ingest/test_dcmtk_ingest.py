"""Real DICOM peers (DCMTK storescu / echoscu) against the gateway's SCP, with the real
scanner files in ../shared/data/dicom, each proposed in its own transfer syntax."""

from __future__ import annotations

import hashlib
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    RLELossless,
)
from sqlalchemy import select

from gateway.index.tables import InstanceRow, SeriesRow, SourceRow, StudyRow
from tests.services import (
    Storescp,
    require_shared_data,
    require_tool,
    storescu,
)
from workers.serve import Gateway

# storescu's option that proposes exactly one transfer syntax
PROPOSE = {
    ImplicitVRLittleEndian: "-xi",
    ExplicitVRLittleEndian: "-xe",
    DeflatedExplicitVRLittleEndian: "-xd",
    JPEGBaseline8Bit: "-xy",
    JPEGLosslessSV1: "-xs",
    JPEG2000Lossless: "-xv",
    JPEG2000: "-xw",
    RLELossless: "-xr",
}

PADDING = 0xFFFCFFFC  # Data Set Trailing Padding
BAD_FILE = "CT_Siemens_JPEGLossless_badseq.dcm"


def shared_files() -> list[Path]:
    root = require_shared_data()
    return sorted(p for p in root.rglob("*.dcm"))


def _stored(gateway: Gateway, sop_uid: str) -> tuple[InstanceRow, SeriesRow, StudyRow, str]:
    with gateway.parts.db.session() as session:
        instance, series, study, source = session.execute(
            select(InstanceRow, SeriesRow, StudyRow, SourceRow.name)
            .join(SeriesRow, InstanceRow.series_id == SeriesRow.id)
            .join(StudyRow, SeriesRow.study_id == StudyRow.id)
            .join(SourceRow, StudyRow.source_id == SourceRow.id)
            .where(InstanceRow.sop_instance_uid == sop_uid)
        ).one()
        return instance, series, study, source


def _assert_same_elements(source: pydicom.Dataset, stored: pydicom.Dataset) -> None:
    """Element by element, ignoring group lengths and trailing padding (a sender may
    re-encode or drop them)."""
    source_tags = {e.tag for e in source if e.tag.element != 0 and e.tag != PADDING}
    stored_tags = {e.tag for e in stored if e.tag.element != 0 and e.tag != PADDING}
    assert source_tags == stored_tags
    for tag in source_tags:
        if source[tag].VR == "SQ":
            assert len(source[tag].value) == len(stored[tag].value), tag
            for a, b in zip(source[tag].value, stored[tag].value, strict=True):
                _assert_same_elements(a, b)
        else:
            assert _same_value(source[tag].value, stored[tag].value), tag


def _same_value(sent: object, received: object) -> bool:
    """Equal, or the sender padded an odd-length byte value to even length in transit."""
    if sent == received:
        return True
    return (
        isinstance(sent, bytes)
        and isinstance(received, bytes)
        and len(received) == len(sent) + 1
        and received[:-1] == sent
        and received[-1:] in (b"\x00", b" ")
    )


@pytest.fixture
def reference_scp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """DCMTK storescp in bit-preserving mode: writes each dataset exactly as it came off
    the wire, the yardstick for "stored as received"."""
    scp = Storescp(tmp_path / "storescp", options=["-B", "+xa", "-pm"])
    scp.start()
    try:
        yield scp.port, scp.folder
    finally:
        scp.stop()


def dataset_bytes(part10: bytes) -> bytes:
    """The bytes after the file meta information group (which each receiver writes itself)."""
    assert part10[128:132] == b"DICM"
    assert part10[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) group length comes first
    (meta_length,) = struct.unpack("<I", part10[140:144])
    return part10[144 + meta_length :]


@pytest.mark.shared_data
def test_every_real_file_is_stored_as_received_in_its_own_syntax(
    gateway: Gateway, reference_scp: tuple[int, Path]
) -> None:
    reference_port, reference_folder = reference_scp
    files = [f for f in shared_files() if f.name != BAD_FILE]
    assert len(files) >= 10
    for path in files:
        source = pydicom.dcmread(path)
        syntax = source.file_meta.TransferSyntaxUID
        result = storescu(gateway.parts.settings.dicom_port, [path], extra=[PROPOSE[syntax]])
        assert result.returncode == 0, f"{path.name}: {result.stderr}"
        reference = storescu(reference_port, [path], extra=[PROPOSE[syntax]], called_ae="ANY")
        assert reference.returncode == 0, f"{path.name} to storescp: {reference.stderr}"
        (received,) = reference_folder.glob(f"*{source.SOPInstanceUID}*")

        instance, series, study, source_name = _stored(gateway, source.SOPInstanceUID)
        assert instance.transfer_syntax_uid == syntax, f"{path.name} was transcoded"
        data = gateway.parts.store.get(instance.object_key)
        assert instance.object_key == (
            f"studies/{source.StudyInstanceUID}/{source.SeriesInstanceUID}/"
            f"{source.SOPInstanceUID}.dcm"
        )
        assert hashlib.sha256(data).hexdigest() == instance.sha256
        ours, wire = dataset_bytes(data), dataset_bytes(received.read_bytes())
        if syntax == DeflatedExplicitVRLittleEndian and len(wire) % 2:
            # The sender pads an odd-length deflate stream with one null byte (PS3.5 A.5);
            # storescp -B drops that pad when it writes, we keep what came off the wire.
            wire += b"\x00"
        assert ours == wire, f"{path.name}: stored dataset differs from what came off the wire"
        assert instance.size_bytes == len(data)
        stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        assert stored.file_meta.TransferSyntaxUID == syntax
        assert stored.file_meta.MediaStorageSOPInstanceUID == source.SOPInstanceUID
        _assert_same_elements(source, stored)
        # the index carries the tags later stages route on
        assert series.modality == source.get("Modality")
        assert instance.rows == source.get("Rows")
        assert instance.photometric_interpretation == source.get("PhotometricInterpretation")
        assert source_name == "irk-cami" and study.region_code == "38"
        if "ImageType" in source:
            assert instance.image_type == "\\".join(source.ImageType)


@pytest.mark.shared_data
def test_malformed_real_file_gets_a_clear_answer_and_the_server_stays_up(gateway: Gateway) -> None:
    require_tool("storescu")
    bad = require_shared_data() / BAD_FILE
    result = storescu(gateway.parts.settings.dicom_port, [bad], extra=["-xs"])
    # Either the dataset is stored as received (it parses leniently) or refused with a
    # named status; in both cases the server answers the next association.
    port = gateway.parts.settings.dicom_port
    echo = subprocess.run(
        [require_tool("echoscu"), "-aet", "IRK_CAMI", "-aec", "AIGW", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
    )
    assert echo.returncode == 0
    source = pydicom.dcmread(bad)
    with gateway.parts.db.session() as session:
        found = session.scalars(
            select(InstanceRow).where(InstanceRow.sop_instance_uid == source.SOPInstanceUID)
        ).all()
    if result.returncode == 0 and "Status" not in result.stderr:
        assert len(found) == 1
    else:
        assert found == []


def test_echo_and_unknown_calling_ae(gateway: Gateway) -> None:
    echoscu = require_tool("echoscu")
    port = str(gateway.parts.settings.dicom_port)
    ok = subprocess.run(
        [echoscu, "-aet", "IRK_CAMI", "-aec", "AIGW", "127.0.0.1", port],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    unknown = subprocess.run(
        [echoscu, "-aet", "STRANGER", "-aec", "AIGW", "127.0.0.1", port],
        capture_output=True,
        text=True,
    )
    assert unknown.returncode != 0
    assert "Calling AE Title Not Recognized" in unknown.stderr
    wrong_called = subprocess.run(
        [echoscu, "-aet", "IRK_CAMI", "-aec", "NOTUS", "127.0.0.1", port],
        capture_output=True,
        text=True,
    )
    assert "Called AE Title Not Recognized" in wrong_called.stderr


def test_four_concurrent_associations(gateway: Gateway, tmp_path: Path) -> None:
    from gateway.demo.synthetic import ct_chest_study, write_study

    require_tool("storescu")
    folders = []
    for seed in range(4):
        study = ct_chest_study(seed=100 + seed, n_slices=12, size=(128, 128))
        write_study(study, tmp_path / f"s{seed}")
        folders.append((study, sorted((tmp_path / f"s{seed}").rglob("*.dcm"))))
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(
            target=lambda files=files: results.append(
                storescu(gateway.parts.settings.dicom_port, files)
            )
        )
        for _study, files in folders
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.returncode for r in results] == [0, 0, 0, 0], [r.stderr for r in results]
    with gateway.parts.db.session() as session:
        for study, files in folders:
            count = (
                session.query(InstanceRow)
                .join(SeriesRow)
                .join(StudyRow)
                .filter(StudyRow.study_uid == study.study_instance_uid)
                .count()
            )
            assert count == len(files)
