"""Index attributes with ASCII values are read from the raw elements: exactly what reading
them through pydicom's conversion gives, for real files and for odd values (padding,
several values, numbers written oddly, values that are no numbers, implicit VR)."""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from gateway.dimse_status import Status
from gateway.errors import InvalidInstance
from gateway.ingest import header, receive, tags
from gateway.ingest.header import Header, PlainHeader
from gateway.ingest.tags import read_tags
from tests.report_fixtures import SHARED_DICOM
from tests.services.series import ct_instance, make_uid

REAL = sorted(SHARED_DICOM.rglob("*.dcm")) if SHARED_DICOM.is_dir() else []


def _converted(dataset: Dataset) -> Dataset:
    """The same dataset with every element already converted by pydicom: read_tags then
    takes pydicom's values (the way every attribute was read before)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for tag in list(dataset.keys()):
            with contextlib.suppress(Exception):  # left raw: read_tags raises on it as before
                dataset[tag]  # converts the raw element in place
    return dataset


def _tags(dataset: Header) -> object:
    try:
        return read_tags(dataset).model_dump_json()  # JSON: NaN equals NaN
    except InvalidInstance as exc:
        return exc.reason


@pytest.mark.skipif(not REAL, reason=f"no real DICOM files under {SHARED_DICOM}")
@pytest.mark.parametrize("path", REAL, ids=[p.name for p in REAL])
def test_real_files_give_pydicoms_values(path: Path) -> None:
    raw = dcmread(path, stop_before_pixels=True)
    assert _tags(raw) == _tags(_converted(dcmread(path, stop_before_pixels=True)))


BASE = {
    "StudyInstanceUID": b"1.2.3",
    "SeriesInstanceUID": b"1.2.3.4",
    "SOPInstanceUID": b"1.2.3.4.5",
    "SOPClassUID": b"1.2.840.10008.5.1.4.1.1.2",
}
ODD = [
    ("StudyInstanceUID", b" 1.2.3 \x00"),
    ("SOPInstanceUID", b"1.2.3.4.5\x00"),
    ("ImageType", b"ORIGINAL \\PRIMARY \\AXIAL "),
    ("ImageType", b"DERIVED\\\\SECONDARY"),
    ("Modality", b" CT "),
    ("PatientSex", b"F "),
    ("PatientAge", b"057Y"),
    ("PatientAge", b"006M"),
    ("PatientBirthDate", b"19700101"),
    ("StudyDate", b"20200101 "),
    ("StudyTime", b"101010.123 "),
    ("SeriesNumber", b" 12 "),
    ("SeriesNumber", b"12.0"),
    ("InstanceNumber", b"1e2 "),
    ("InstanceNumber", b"12.5"),
    ("InstanceNumber", b"1\\2"),
    ("InstanceNumber", b"abc "),
    ("InstanceNumber", b"nan"),
    ("InstanceNumber", b"inf"),
    ("InstanceNumber", b"-3.7"),
    ("NumberOfFrames", b"+5"),
    ("SliceThickness", b"1.25 "),
    ("SliceThickness", b" 2e-1"),
    ("SliceThickness", b"1,5 "),
    ("SliceThickness", b"1\\2 "),
    ("SliceThickness", b"nan"),
    ("ImagePositionPatient", b" -125.0\\ -125.5 \\0 "),
    ("ImageOrientationPatient", b"1\\0\\0\\0\\1\\0 "),
    ("PhotometricInterpretation", b"MONOCHROME2 "),
    ("ViewPosition", b""),
    ("BodyPartExamined", b"CHEST\x00"),
]


def _dataset(values: dict[str, bytes], implicit: bool) -> Dataset:
    dataset = Dataset()
    dataset.set_original_encoding(implicit, True)
    for keyword, value in values.items():
        tag = Tag(tags._TAGS[keyword])
        vr = None if implicit else tags._ASCII_VRS[keyword]
        dataset._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, implicit, True)
    return dataset


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize(("keyword", "value"), ODD, ids=[f"{k}={v!r}" for k, v in ODD])
def test_odd_values_give_pydicoms_values(keyword: str, value: bytes, implicit: bool) -> None:
    values = BASE | {keyword: value}
    if _pydicom_refuses(_dataset(values, implicit), keyword):
        # Nothing of pydicom's to compare with: the instance is refused, as it was when
        # pydicom converted every attribute (its error became CANNOT_UNDERSTAND).
        with pytest.raises(InvalidInstance) as refused:
            read_tags(_dataset(values, implicit))
        assert refused.value.status == Status.CANNOT_UNDERSTAND
    else:
        assert _tags(_dataset(values, implicit)) == _tags(_converted(_dataset(values, implicit)))


def _pydicom_refuses(dataset: Dataset, keyword: str) -> bool:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset[Tag(tags._TAGS[keyword])]
        except Exception:
            return True
    return False


def test_an_element_of_another_vr_is_read_through_pydicom() -> None:
    dataset = _dataset(BASE, implicit=False)
    tag = Tag(tags._TAGS["InstanceNumber"])
    dataset._dict[tag] = RawDataElement(tag, "US", 2, b"\x07\x00", 0, False, True)
    assert read_tags(dataset).instance_number == 7


def test_a_file_written_by_pydicom_reads_alike() -> None:
    dataset = _dataset(BASE | dict(ODD[2:12]), implicit=False)
    buffer = io.BytesIO()
    dataset.save_as(buffer, implicit_vr=True, little_endian=True)
    reread = dcmread(io.BytesIO(buffer.getvalue()), force=True)
    assert _tags(reread) == _tags(_converted(dcmread(io.BytesIO(buffer.getvalue()), force=True)))


def test_the_raw_attributes_have_their_dictionary_vr() -> None:
    # An implicit VR element is read as this VR, as pydicom reads it by its dictionary.
    assert {k: dictionary_VR(tags._TAGS[k]) for k in tags._ASCII_VRS} == tags._ASCII_VRS
    assert {k: dictionary_VR(tags._TAGS[k]) for k in tags._TEXT_VRS} == tags._TEXT_VRS


@pytest.mark.parametrize("little", [True, False])
@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize(
    "value", [b"\x00\x02", b"\x01\x00", b"\xff\xff", b"", b"\x00\x02\x00\x01", b"\x07"]
)
def test_rows_and_columns_give_pydicoms_values(value: bytes, implicit: bool, little: bool) -> None:
    def dataset() -> Dataset:
        made = _dataset(BASE, implicit)
        made.set_original_encoding(implicit, little)
        for keyword in ("Rows", "Columns"):
            tag = Tag(tags._TAGS[keyword])
            vr = None if implicit else "US"
            made._dict[tag] = RawDataElement(tag, vr, len(value), value, 0, implicit, little)
        return made

    if _pydicom_refuses(dataset(), "Rows"):
        with pytest.raises(InvalidInstance):
            read_tags(dataset())
        return
    assert _tags(dataset()) == _tags(_converted(dataset()))
    if len(value) == 2:  # read from the raw bytes: pydicom converted neither
        raw = dataset()
        read_tags(raw)
        assert isinstance(raw.get_item(Tag(tags._TAGS["Rows"])), RawDataElement)


# Names and descriptions of a plain header, decoded by tags itself with the codec pydicom
# would use: (keyword, VR written, value, Specific Character Set, decoded without pydicom).
CYRILLIC = "Иванов^Иван"
JIS_NAME = b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"  # PS3.5 H.3.1, three groups
JIS_ONLY = b"\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"  # escapes, one group
JIS = b"\\ISO 2022 IR 87"
TEXT = [
    ("PatientName", "PN", b"Ivanov^Ivan", None, True),
    ("PatientName", "PN", CYRILLIC.encode("iso8859_5"), b"ISO_IR 144", True),
    ("PatientName", "PN", CYRILLIC.encode("utf-8"), b"ISO_IR 192", True),
    ("PatientName", "PN", b"M\xfcller^Hans", None, True),
    ("PatientName", "PN", b"M\xfcller^Hans", b"ISO_IR 100", True),
    ("PatientName", "PN", b"DOE^JOHN^^^ ", None, True),
    ("PatientName", "PN", b"A^B\\C^D ", None, True),
    ("PatientName", "PN", b" \x00", None, True),
    ("PatientName", "PN", b"", None, True),
    ("PatientName", "PN", b"A^B=C^D", None, False),  # name groups: PersonName's own work
    ("PatientName", "PN", JIS_NAME, JIS, False),
    ("PatientName", "PN", JIS_ONLY, JIS, False),  # escape sequences: pydicom's to decode
    ("SeriesDescription", "LO", JIS_ONLY, JIS, False),
    ("PatientName", "PN", b"\xff\xfe^A", b"ISO_IR 192", False),  # pydicom replaces, warning
    ("PatientName", "PN", b"Ivanov^Ivan", b"ISO_IR 999", False),  # a term pydicom warns about
    ("PatientName", "LO", b"Ivanov^Ivan", None, False),  # not its VR: pydicom reads it
    ("PatientID", "LO", b" 12345 \x00", None, True),
    ("PatientID", "LO", "Ф-123".encode("iso8859_5"), b"ISO_IR 144", True),
    ("StudyDescription", "LO", b"CT CHEST \\ WITH CONTRAST \x00", None, True),
    ("StudyDescription", "LO", "КТ ОГК\\ ".encode(), b"ISO_IR 192", True),
    ("SeriesDescription", "LO", "Легкие".encode("iso8859_5"), b"ISO_IR 144", True),
    ("SeriesDescription", "LO", b"\\\\", None, True),
    ("AccessionNumber", "SH", b"", None, True),
    ("AccessionNumber", "SH", b"A-1 \x00", None, True),
    ("ProtocolName", "LO", b"   ", None, True),
    ("ProtocolName", "UN", b"Chest", None, False),
]


def _plain_header(
    vr: str, keyword: str, value: bytes, charset: bytes | None, implicit: bool
) -> tuple[PlainHeader, bytes]:
    """A CT slice whose Patient's Name, ``keyword`` and Specific Character Set are exactly
    these bytes (pydicom's writer would convert them), read as a plain header."""
    study = make_uid("text-tags")
    dataset = ct_instance(study, make_uid(study, "s"), make_uid(study, "i"), size=8)
    syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    dataset.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
    written = buffer.getvalue()
    start = 144 + int.from_bytes(written[140:144], "little")
    elements, pixels_at = header._walk(written, start, implicit, None)
    raws = {tag: (raw.VR or "", raw.value or b"") for tag, raw in elements.items()}
    raws.pop(0x00080005, None)
    raws[0x00100010] = ("PN", b"Plain^Name")
    raws[tags._TAGS[keyword]] = (vr, value)
    if charset is not None:
        raws[0x00080005] = ("CS", charset)
    body = b"".join(_element(tag, *raws[tag], implicit) for tag in sorted(raws))
    data = written[:start] + body + written[pixels_at:]
    read = header.read_header(data, True, receive._WANTED)
    assert read is not None, "a plain file was declined"
    return read[0], data


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    value += b" " if len(value) % 2 else b""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", len(value)) + value
    if vr in ("OB", "OW", "UN", "UT", "SQ"):
        return head + vr.encode() + b"\0\0" + struct.pack("<I", len(value)) + value
    return head + vr.encode() + struct.pack("<H", len(value)) + value


# Implicit VR too, where the VR written is the dictionary's (an implicit element has no other).
TEXT_CASES = [
    (*case, implicit)
    for case in TEXT
    for implicit in (False, True)
    if not implicit or case[1] == tags._TEXT_VRS[case[0]]
]


@pytest.mark.parametrize(
    ("keyword", "vr", "value", "charset", "plain", "implicit"),
    TEXT_CASES,
    ids=[
        f"{k}-{vr}={v!r}-{c!r}-{'implicit' if i else 'explicit'}"
        for k, vr, v, c, _p, i in TEXT_CASES
    ],
)
def test_names_and_descriptions_of_a_plain_header_are_pydicoms(
    keyword: str, vr: str, value: bytes, charset: bytes | None, plain: bool, implicit: bool
) -> None:
    plain_header, data = _plain_header(vr, keyword, value, charset, implicit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's own, for the values it replaces
        expected = _tags(_converted(dcmread(io.BytesIO(data), stop_before_pixels=True)))
        assert _tags(plain_header) == expected
    # Decoded here, or left to pydicom (which builds its Dataset for it): as the case says.
    assert plain_header.converted is not plain


def test_a_ct_slice_is_read_without_building_pydicoms_dataset() -> None:
    plain_header, _data = _plain_header(
        "PN", "PatientName", CYRILLIC.encode(), b"ISO_IR 192", False
    )
    read = read_tags(plain_header)
    assert read.study.patient_name == CYRILLIC and read.study.patient_id
    assert not plain_header.converted
