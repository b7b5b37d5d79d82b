"""The one header policy of every result object (SR, flag SC, GSPS, SEG): IHE AIR's
Contributing Equipment, the job's times with their offset, UIDs under the organisation's
root, and the source's invalid values mended the same way for all — each checked on the
objects as written, most through dciodvfy."""

from __future__ import annotations

import ast
import copy
import io
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pydicom
import pytest
from pydantic import ValidationError
from pydicom import Dataset
from pydicom.uid import PYDICOM_ROOT_UID, UID

import gateway.results
from gateway.inference.findings import Location
from gateway.results.encoding import part10
from gateway.results.flags import build_flag_images
from gateway.results.gsps import build_gsps
from gateway.results.header import device_uid, mint_uid, reference_header, source_header
from gateway.results.input import ReportInput
from gateway.results.seg import build_seg
from gateway.results.sr import build_sr
from gateway.settings import Settings
from tests import report_fixtures
from tests.services import dciodvfy_errors, require_shared_data

BUILDERS = ("sr", "flags", "gsps", "seg")

ROOT = "1.2.643.5.1.13.13.12.2.38.3811."
PROCESSING_ALGORITHM = ("Newcode1", "99IHE", "Processing Algorithm")
ACQUISITION_EQUIPMENT = "109101"


@pytest.fixture(scope="module")
def ct() -> ReportInput:
    """A CT job whose results are all four objects: SR, flag SC, GSPS and SEG."""
    return report_fixtures.ct_chest_input(positive=True)


def every_object(report: ReportInput) -> list[tuple[str, Dataset]]:
    gsps, seg = build_gsps(report), build_seg(report)
    assert gsps is not None and seg is not None
    flags = build_flag_images(report)
    return [("SR", build_sr(report)), *(("SC", sc) for sc in flags), ("GSPS", gsps), ("SEG", seg)]


def ai_device_item(dataset: Dataset) -> Dataset:
    items: list[Dataset] = [
        item
        for item in dataset.ContributingEquipmentSequence
        if _purpose(item) == PROCESSING_ALGORITHM
    ]
    assert len(items) == 1, "the AI device once, as IHE AIR's Processing Algorithm"
    return items[0]


def _purpose(item: Dataset) -> tuple[str, str, str]:
    code = item.PurposeOfReferenceCodeSequence[0]
    return str(code.CodeValue), str(code.CodingSchemeDesignator), str(code.CodeMeaning)


def uids(dataset: Dataset) -> Iterator[str]:
    """Every UID the object mints itself (not the source's it references)."""
    yield str(dataset.SOPInstanceUID)
    yield str(dataset.SeriesInstanceUID)
    for item in dataset.ContributingEquipmentSequence:
        if "DeviceUID" in item:
            yield str(item.DeviceUID)
    for segment in dataset.get("SegmentSequence", []):
        yield str(segment.TrackingUID)


# --- IHE AIR --------------------------------------------------------------------------


def test_every_result_object_names_the_ai_device_as_ihe_air_asks(
    ct: ReportInput, tmp_path: Path
) -> None:
    objects = every_object(ct)
    assert [kind for kind, _ in objects] == ["SR", "SC", "GSPS", "SEG"]
    device = ct.device
    for kind, dataset in objects:
        item = ai_device_item(dataset)
        assert (item.Manufacturer, item.ManufacturerModelName) == (device.vendor, device.id), kind
        assert item.SoftwareVersions == device.version, kind
        assert item.DeviceUID == device_uid(ct), kind
        assert dciodvfy_errors(dataset, tmp_path) == [], kind
    # The SR's device observer is the same device.
    observer = [
        item.UID
        for item in _items(objects[0][1])
        if item.ConceptNameCodeSequence[0].CodeValue == "121012"  # Device Observer UID
    ]
    assert observer == [device_uid(ct)]


def _items(node: Dataset) -> Iterator[Dataset]:
    for item in node.get("ContentSequence", []):
        yield item
        yield from _items(item)


def test_the_device_uid_changes_with_the_device_version(ct: ReportInput) -> None:
    retrained = replace(ct, device=ct.device.model_copy(update={"version": "1.0.1"}))
    before = {kind: ai_device_item(ds).DeviceUID for kind, ds in every_object(ct)}
    after = {kind: ai_device_item(ds).DeviceUID for kind, ds in every_object(retrained)}
    assert len(set(before.values())) == 1 and len(set(after.values())) == 1
    assert set(before.values()) != set(after.values())
    assert after["SR"] == device_uid(retrained)
    # The same version elsewhere (another job, another study) is the same device.
    other_job = replace(ct, job_id=ct.job_id + 1)
    assert device_uid(other_job) == device_uid(ct)


# --- times ----------------------------------------------------------------------------


def test_every_object_states_its_times_and_their_offset(ct: ReportInput) -> None:
    started, finished = ct.started_at, ct.completed_at
    assert started < finished
    start = (started.strftime("%Y%m%d"), started.strftime("%H%M%S"))
    end = (finished.strftime("%Y%m%d"), finished.strftime("%H%M%S"))
    for kind, dataset in every_object(ct):
        assert dataset.TimezoneOffsetFromUTC == "+0000", kind
        assert _stamp(dataset, "InstanceCreation") == end, kind
        assert _stamp(dataset, "Series") == start, kind
        if kind != "GSPS":  # the presentation state IOD has no Content Date
            # IHE AIR: the content is dated when the analysis started.
            assert _stamp(dataset, "Content") == start, kind
        assert "ContributionDateTime" in ai_device_item(dataset), kind
        for item in dataset.ContributingEquipmentSequence:
            if "ContributionDateTime" in item:
                assert str(item.ContributionDateTime) == "".join(end) + "+0000", kind


def _stamp(dataset: Dataset, prefix: str) -> tuple[str, str]:
    return str(dataset[f"{prefix}Date"].value), str(dataset[f"{prefix}Time"].value)


# --- UIDs -----------------------------------------------------------------------------


def test_uids_are_minted_under_the_organisations_root_when_set(ct: ReportInput) -> None:
    rooted = replace(ct, uid_root=ROOT)
    minted = [uid for _, dataset in every_object(rooted) for uid in uids(dataset)]
    assert len(minted) >= 9
    assert all(uid.startswith(ROOT) and UID(uid).is_valid for uid in minted)
    # Unset: the UUID-derived arc, never pydicom's root; a rebuild repeats every UID.
    unset = [uid for _, dataset in every_object(ct) for uid in uids(dataset)]
    assert all(uid.startswith("2.25.") and UID(uid).is_valid for uid in unset)
    assert not any(uid.startswith(PYDICOM_ROOT_UID) for uid in unset)
    assert unset == [uid for _, dataset in every_object(ct) for uid in uids(dataset)]
    assert set(unset).isdisjoint(minted)


def test_uid_parts_do_not_run_together() -> None:
    """Study "1.2.34" job 5 and study "1.2.3" job 45 are different results."""
    for root in (None, ROOT):
        assert mint_uid(root, "1.2.34", "5", "sr") != mint_uid(root, "1.2.3", "45", "sr")
        assert mint_uid(root, "1.2.3", "45", "sr") == mint_uid(root, "1.2.3", "45", "sr")


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("1.2.643.5.1.13.13.12.2.38.3811", ROOT),
        (ROOT, ROOT),
        ("2.16.840.1.113669.632.", "2.16.840.1.113669.632."),
        ("", None),
    ],
)
def test_the_uid_root_setting_keeps_an_oid_with_its_dot(
    value: str, stored: str | None, make_settings: Callable[..., Settings]
) -> None:
    assert make_settings(uid_root=value).uid_root == stored


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("1.2.643.05", "not an OID"),
        ("1..2", "not an OID"),
        ("org.example", "not an OID"),
        ("3.1.2", "not an OID"),
        ("1.2.643.5.1.13.13.12.2.38.3811.1234567890", "at most 40"),
        ("2.25.1234", "UUID arc"),
        (PYDICOM_ROOT_UID, "pydicom's root"),
    ],
)
def test_the_uid_root_setting_refuses_what_would_mint_bad_uids(
    value: str, why: str, make_settings: Callable[..., Settings]
) -> None:
    with pytest.raises(ValidationError, match=re.escape(why)):
        make_settings(uid_root=value)


# --- values the source gets wrong ---------------------------------------------------------


@pytest.mark.shared_data
def test_a_real_cr_with_patient_age_62_gives_valid_objects_of_every_kind(
    tmp_path: Path,
) -> None:
    """PatientAge "62" is not an Age String (nnnY): every object mends it the same way,
    and the flag image names the CR's own equipment only as acquisition equipment."""
    source = pydicom.dcmread(require_shared_data() / "CR_chest_PA_Philips_J2KI.dcm")
    with pytest.warns(UserWarning, match="Invalid value for VR AS"):
        source.PatientAge = "62"
    rows, columns = int(source.Rows), int(source.Columns)
    base = report_fixtures.chest_xray_input(positive=True)
    mask = base.findings[0].mask
    assert mask is None
    finding = report_fixtures.finding(
        base.device,
        0.9,
        True,
        location=Location(
            sop_instance_uid=str(source.SOPInstanceUID),
            centre=(rows / 3 + 20.5, columns / 2 + 30.5),
            box=((rows // 3, rows // 3 + 41.0), (columns // 2, columns // 2 + 61.0)),
        ),
    )
    report = replace(base, sources=[source], findings=[finding])
    gsps = build_gsps(report)
    assert gsps is not None
    (sc,) = build_flag_images(report)
    for kind, dataset in (("SR", build_sr(report)), ("SC", sc), ("GSPS", gsps)):
        assert "PatientAge" not in dataset, kind  # Type 3: left out rather than wrong
        assert dciodvfy_errors(dataset, tmp_path) == [], kind
        assert str(dataset.PatientName) == str(source.PatientName), kind
    scanner = [
        item
        for item in sc.ContributingEquipmentSequence
        if item.Manufacturer == source.Manufacturer
    ]
    assert scanner and all(_purpose(i)[0] == ACQUISITION_EQUIPMENT for i in scanner)
    assert source.PatientAge == "62"  # the source itself is left as it was


# --- one home per concept -------------------------------------------------------------------


def test_no_builder_imports_another() -> None:
    """What two builders share lives in a module named for it (header, marks, windowing,
    notices), not in one of them."""
    package = Path(gateway.results.__file__).parent
    borrowed = {}
    for name in BUILDERS:
        tree = ast.parse((package / f"{name}.py").read_text(encoding="utf-8"))
        imported: set[str] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or node.module is None:
                continue
            if node.module == "gateway.results":  # from gateway.results import flags
                imported |= {alias.name for alias in node.names}
            elif node.module.startswith("gateway.results."):
                imported.add(node.module.split(".")[2])
        borrowed[name] = sorted(imported & (set(BUILDERS) - {name}))
    assert borrowed == {name: [] for name in BUILDERS}


@pytest.mark.parametrize("mode", ["warn", "raise"])
def test_a_bad_multi_valued_value_is_dropped_without_a_new_check(
    mode: str, ct: ReportInput, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader does not check a CS value; copying the header must not check it either
    (a warning per copy, or under RAISE a failed result) before the mending drops it."""
    ds = copy.deepcopy(ct.sources[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    data = part10(ds).replace(b"ORIGINAL\\PRIMARY\\AXIAL", b"ORIGINAL\\primary\\AXIAL")
    read = pydicom.dcmread(io.BytesIO(data))
    monkeypatch.setattr(
        pydicom.config.settings,
        "reading_validation_mode",
        pydicom.config.RAISE if mode == "raise" else pydicom.config.WARN,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        header = source_header(read)
        reference = reference_header(read, ("ImageType",))
    assert "ImageType" not in header and "ImageType" not in reference
    assert header.SOPInstanceUID == ds.SOPInstanceUID
