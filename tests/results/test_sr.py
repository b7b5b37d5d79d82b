"""The SR builder: every SR passes dciodvfy and dsrdump, and reads back to what the job found.

Each SR is written to a file and parsed again with plain pydicom, so the assertions are on
what a receiving archive gets, not on highdicom's objects.
"""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid

from gateway.results.header import device_uid, series_description, tracking_uid
from gateway.results.input import ReportFinding, ReportInput
from gateway.results.notices import AI_NOTICE_RU
from gateway.results.sr import build_sr
from models.manifest import Registration
from tests import report_fixtures
from tests.services import require_shared_data, require_tool

CYRILLIC = re.compile(r"[А-Яа-яЁё]")
PRESENT, ABSENT = "52101004", "272519000"


# --- reading an SR back -------------------------------------------------------------------


def _items(node: Dataset) -> Iterator[Dataset]:
    for item in node.get("ContentSequence", []):
        yield item
        yield from _items(item)


def _named(sr: Dataset, code: str) -> list[Dataset]:
    return [i for i in _items(sr) if i.ConceptNameCodeSequence[0].CodeValue == code]


def _one(sr: Dataset, code: str) -> Dataset:
    (item,) = _named(sr, code)
    return item


def _texts(sr: Dataset, code: str) -> list[str]:
    return [str(i.TextValue) for i in _named(sr, code)]


def _num(item: Dataset) -> tuple[float, str]:
    measured = item.MeasuredValueSequence[0]
    return float(measured.NumericValue), str(measured.MeasurementUnitsCodeSequence[0].CodeValue)


def _write_and_validate(sr: Dataset, folder: Path) -> Dataset:
    """Write the SR, run dciodvfy -new (no error lines) and dsrdump (exit 0), read it back."""
    dciodvfy, dsrdump = require_tool("dciodvfy"), require_tool("dsrdump")
    path = folder / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    check = subprocess.run([dciodvfy, "-new", str(path)], capture_output=True, text=True)
    errors = [
        line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")
    ]
    assert errors == [], "\n".join(errors)
    # dsrdump cuts long texts mid-character: its output is for eyes, not for decoding.
    dump = subprocess.run([dsrdump, str(path)], capture_output=True, text=True, errors="replace")
    assert dump.returncode == 0, dump.stderr
    return pydicom.dcmread(path)


def _assert_common(sr: Dataset, report: ReportInput) -> None:
    """What every SR says, whatever was found."""
    source, device = report.sources[0], report.device
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    assert sr.PatientID == source.PatientID
    assert str(sr.PatientName) == str(source.PatientName)
    assert (sr.get("AccessionNumber") or "") == (source.get("AccessionNumber") or "")
    assert sr.SeriesInstanceUID not in {s.SeriesInstanceUID for s in report.sources}
    assert sr.SeriesDescription == series_description(device)
    assert sr.SeriesDescription.startswith("ИИ: ") and sr.SeriesDescription.endswith(" 1.0.0")
    assert sr.SeriesNumber == 9901
    assert sr.Manufacturer == device.vendor
    assert sr.VerificationFlag == "UNVERIFIED" and sr.PreliminaryFlag == "PRELIMINARY"
    # The device observer (TID 1004) and the device as contributing equipment.
    assert _one(sr, "121005").ConceptCodeSequence[0].CodeValue == "121007"  # Device
    assert device_uid(report) == _one(sr, "121012").UID
    name = _one(sr, "121013").TextValue
    assert device.name_ru in name and "без РУ — исследовательское устройство" in name
    assert _one(sr, "121014").TextValue == device.vendor
    assert _one(sr, "121015").TextValue == device.id
    assert _one(sr, "121016").TextValue == device.version
    equipment = [
        e for e in sr.ContributingEquipmentSequence if e.get("ManufacturerModelName") == device.id
    ]
    assert len(equipment) == 1 and equipment[0].SoftwareVersions == device.version
    # IHE AIR's Processing Algorithm (was DCM 109102 Processing Equipment before AIR).
    purpose = equipment[0].PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("Newcode1", "99IHE")
    # The image library lists exactly the analysed instances, in their order.
    library = _one(sr, "111028")  # Image Library
    listed = [
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for i in _items(library)
        if i.ValueType == "IMAGE"
    ]
    assert listed == [s.SOPInstanceUID for s in report.sources]
    evidence = {
        ref.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert evidence == {s.SOPInstanceUID for s in report.sources}
    # Conclusion in Russian, the AI notice and the device's provenance notice.
    (conclusion,) = _texts(sr, "121077")
    assert CYRILLIC.search(conclusion) and "Заключение ИИ" in conclusion
    comments = _texts(sr, "121106")
    assert AI_NOTICE_RU in comments
    assert device.provenance.notice_ru in comments
    assert (
        device.provenance.notice_ru
        == "Обучено на синтетических фантомах. Не для клинического применения."
    )


def _group(sr: Dataset, finding: ReportFinding) -> Dataset:
    groups = [
        g
        for g in _named(sr, "125007")  # Measurement Group
        if any(
            i.ConceptNameCodeSequence[0].CodeValue == finding.label_code for i in g.ContentSequence
        )
    ]
    assert len(groups) == 1
    return groups[0]


def _assert_finding(group: Dataset, finding: ReportFinding) -> None:
    (evaluation,) = [
        i
        for i in group.ContentSequence
        if i.ConceptNameCodeSequence[0].CodeValue == finding.label_code
    ]
    assert evaluation.ConceptCodeSequence[0].CodeValue == (PRESENT if finding.positive else ABSENT)
    (probability,) = [
        i for i in group.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "122157"
    ]
    value, unit = _num(probability)
    assert value == pytest.approx(finding.probability) and unit == "1"
    sizes = {
        i.ConceptNameCodeSequence[0].CodeValue: _num(i)
        for i in group.ContentSequence
        if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue != "122157"
    }
    expected: dict[str, tuple[float, str]] = {}
    if "max_diameter_mm" in finding.measurements:
        expected["81827009"] = (finding.measurements["max_diameter_mm"], "mm")
    if "volume_mm3" in finding.measurements:
        expected["118565006"] = (finding.measurements["volume_mm3"], "mm3")
    assert sizes.keys() == expected.keys()
    for code, (value, unit) in expected.items():
        assert sizes[code][0] == pytest.approx(value) and sizes[code][1] == unit


def _polyline(group: Dataset) -> tuple[list[float], str]:
    (region,) = [i for i in group.ContentSequence if i.ValueType == "SCOORD"]
    assert region.GraphicType == "POLYLINE"
    source = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return [float(v) for v in region.GraphicData], str(source)


def _box_as_dicom(finding: ReportFinding) -> list[float]:
    """The box's corners as DICOM (column, row) pairs, closed."""
    box = finding.location.box
    assert box is not None
    (r0, r1), (c0, c1) = box[-2], box[-1]
    return [c0, r0, c1, r0, c1, r1, c0, r1, c0, r0]


# --- the fixtures' SRs --------------------------------------------------------------------


def test_positive_chest_xray_sr(tmp_path: Path) -> None:
    report = report_fixtures.chest_xray_input(positive=True)
    sr = _write_and_validate(build_sr(report), tmp_path)
    _assert_common(sr, report)
    finding = report.findings[0]
    group = _group(sr, finding)
    _assert_finding(group, finding)
    points, image = _polyline(group)
    assert image == finding.location.sop_instance_uid
    # Fixture box rows 305–334, columns 723–753: DICOM starts with the column.
    assert points[:2] == [723.0, 305.0]
    assert points == _box_as_dicom(finding)
    (conclusion,) = _texts(sr, "121077")
    assert "выявлены признаки" in conclusion and finding.label_ru in conclusion
    assert "0,91" in conclusion and "10,2 мм" in conclusion


def test_negative_chest_xray_sr_says_nothing_above_threshold(tmp_path: Path) -> None:
    report = report_fixtures.chest_xray_input(positive=False)
    sr = _write_and_validate(build_sr(report), tmp_path)
    _assert_common(sr, report)
    finding = report.findings[0]
    group = _group(sr, finding)
    _assert_finding(group, finding)
    assert not [i for i in _items(sr) if i.ValueType == "SCOORD"]
    (conclusion,) = _texts(sr, "121077")
    assert "не выявлено" in conclusion and "выше порога" in conclusion


def test_ct_sr_outlines_the_nodule_on_the_centre_slice(tmp_path: Path) -> None:
    report = report_fixtures.ct_chest_input(positive=True)
    sr = _write_and_validate(build_sr(report), tmp_path)
    _assert_common(sr, report)
    finding = report.findings[0]
    group = _group(sr, finding)
    _assert_finding(group, finding)
    points, image = _polyline(group)
    assert finding.location.centre is not None
    assert image == report.sources[int(finding.location.centre[0])].SOPInstanceUID
    assert points == _box_as_dicom(finding)
    assert _procedure(sr) == "25045-6"


def test_ct_series_image_library_states_shared_descriptors_once(tmp_path: Path) -> None:
    """One Image Library Group for the series: its descriptors (modality, spacing,
    orientation) once, and each slice's entry with only its own position, in mm."""
    report = report_fixtures.ct_chest_input(positive=True)
    sr = _write_and_validate(build_sr(report), tmp_path)
    (group,) = _named(sr, "126200")  # Image Library Group
    shared = [i for i in group.ContentSequence if i.ValueType != "IMAGE"]
    entries = [i for i in group.ContentSequence if i.ValueType == "IMAGE"]
    names = [i.ConceptNameCodeSequence[0].CodeValue for i in shared]
    assert "121139" in names and "111026" in names  # Modality, Horizontal Pixel Spacing
    assert not {"110901", "110902", "110903"} & set(names)  # no position at group level
    assert len(entries) == len(report.sources)
    for entry, source in zip(entries, report.sources, strict=True):
        positions = [_num(i) for i in entry.ContentSequence]
        assert [value for value, _ in positions] == [float(v) for v in source.ImagePositionPatient]
        assert {unit for _, unit in positions} == {"mm"}


def test_ct_sr_from_two_series_keeps_one_group_per_series(tmp_path: Path) -> None:
    report = report_fixtures.ct_chest_input(positive=True)
    other_series = generate_uid()
    for source in report.sources[::2]:
        source.SeriesInstanceUID = other_series
    sr = _write_and_validate(build_sr(report), tmp_path)
    groups = _named(sr, "126200")
    assert [sum(i.ValueType == "IMAGE" for i in g.ContentSequence) for g in groups] == [
        len(report.sources[::2]),
        len(report.sources[1::2]),
    ]


def test_mammography_sr_lists_all_views_and_marks_one(tmp_path: Path) -> None:
    report = report_fixtures.mammography_input()
    sr = _write_and_validate(build_sr(report), tmp_path)
    _assert_common(sr, report)
    assert len(report.sources) == 4
    finding = report.findings[0]
    _assert_finding(_group(sr, finding), finding)
    assert _polyline(_group(sr, finding))[1] == finding.location.sop_instance_uid


def _procedure(sr: Dataset) -> str:
    return str(_one(sr, "121058").ConceptCodeSequence[0].CodeValue)


@pytest.mark.parametrize(
    "name", ["CR_chest_PA_Philips_J2KI.dcm", "DX_chest_NIH_SC_uncompressed.dcm"]
)
def test_sr_for_real_source_files(tmp_path: Path, name: str) -> None:
    """A compressed CR with 0\\0 pixel spacing and a Secondary Capture chest film (no
    projection geometry, an invalid Patient's Age): valid SRs, sources left untouched."""
    source = pydicom.dcmread(require_shared_data() / name)
    before = source.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda e: "")
    pixels = source.PixelData
    base = report_fixtures.chest_xray_input(positive=True)
    rows, columns = int(source.Rows), int(source.Columns)
    finding = report_fixtures.relocated(
        base.findings[0],
        sop_instance_uid=source.SOPInstanceUID,
        centre=(rows // 3 + 20.5, columns // 2 + 30.5),
        box=((rows // 3, rows // 3 + 41.0), (columns // 2, columns // 2 + 61.0)),
    ).model_copy(update={"measurements": {"max_diameter_mm": 14.0}})
    report = dataclasses.replace(base, sources=[source], findings=[finding])
    sr = _write_and_validate(build_sr(report), tmp_path)
    _assert_common(sr, report)
    _assert_finding(_group(sr, finding), finding)
    points, image = _polyline(_group(sr, finding))
    assert image == source.SOPInstanceUID
    assert points == pytest.approx(_box_as_dicom(finding))  # Graphic Data is float32
    after = source.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda e: "")
    assert after == before and source.PixelData is pixels


# --- rules -------------------------------------------------------------------------------


def test_rebuilding_gives_the_same_uids_and_bytes() -> None:
    report = report_fixtures.chest_xray_input(positive=True)
    first, second = build_sr(report), build_sr(report)
    assert first.SOPInstanceUID == second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert _one(first, "112040").UID == _one(second, "112040").UID == tracking_uid(report, 1)
    assert _bytes(first) == _bytes(second)
    other = build_sr(dataclasses.replace(report, job_id=report.job_id + 1))
    assert other.SOPInstanceUID != first.SOPInstanceUID
    assert other.SeriesInstanceUID != first.SeriesInstanceUID


def _bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_registered_clinical_device_states_its_registration(tmp_path: Path) -> None:
    base = report_fixtures.chest_xray_input(positive=True)
    device = base.device.model_copy(
        update={
            "registration": Registration(number="РЗН 2024/23456", date=date(2024, 3, 1)),
            "provenance": base.device.provenance.model_copy(update={"clinical_use": True}),
        }
    )
    report = dataclasses.replace(base, device=device)
    sr = _write_and_validate(build_sr(report), tmp_path)
    assert "РУ РЗН 2024/23456 от 01.03.2024" in _one(sr, "121013").TextValue
    comments = _texts(sr, "121106")
    assert comments == [AI_NOTICE_RU]  # no "not for clinical use" on a registered device


def test_long_device_names_fit_the_series_description() -> None:
    device = report_fixtures.device("aigw-ref-cxr")
    long = device.model_copy(update={"name_ru": "Очень " * 30, "name": "Very " * 30})
    text = series_description(long)
    assert len(text.encode("utf-8")) <= 64
    assert text == f"ИИ: {device.id} {device.version}"
    short = device.model_copy(update={"name_ru": "ИИ-флюоро"})
    assert series_description(short) == "ИИ: ИИ-флюоро 1.0.0"


def test_a_located_centre_without_box_becomes_a_point(tmp_path: Path) -> None:
    base = report_fixtures.chest_xray_input(positive=True)
    finding = report_fixtures.relocated(base.findings[0], box=None, centre=(318.5, 737.5))
    report = dataclasses.replace(base, findings=[finding])
    sr = _write_and_validate(build_sr(report), tmp_path)
    (region,) = [i for i in _items(sr) if i.ValueType == "SCOORD"]
    assert region.GraphicType == "POINT"
    assert [float(v) for v in region.GraphicData] == [737.5, 318.5]


def test_a_finding_on_an_unknown_image_is_refused() -> None:
    base = report_fixtures.chest_xray_input(positive=True)
    finding = report_fixtures.relocated(base.findings[0], sop_instance_uid="1.2.3.4")
    with pytest.raises(ValueError, match="not among the job's sources"):
        build_sr(dataclasses.replace(base, findings=[finding]))
