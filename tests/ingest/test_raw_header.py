"""gateway.ingest.header: a received header walked straight from its bytes keeps, for the
plain case, exactly what pydicom reads of the elements ingest uses, and declines (None, so
that pydicom reads it) everything else."""

from __future__ import annotations

import io
import warnings

import pytest
from pydicom import Dataset, dcmread
from pydicom.dataelem import RawDataElement
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from gateway.errors import InvalidInstance
from gateway.ingest import header, receive
from gateway.ingest.header import Header, read_header
from gateway.ingest.tags import read_tags
from tests.report_fixtures import SHARED_DICOM
from tests.services.series import ct_instance, make_uid

REAL = sorted(SHARED_DICOM.rglob("*.dcm")) if SHARED_DICOM.is_dir() else []
PLAIN_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}


def _encode(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    ds.save_as(
        buffer,
        enforce_file_format=True,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=syntax != ExplicitVRBigEndian,
    )
    return buffer.getvalue()


def _ct(**extra: object) -> Dataset:
    study = make_uid("raw-header")
    ds = ct_instance(study, make_uid(study, "s"), make_uid(study, "i"), size=16)
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def _pydicom(data: bytes) -> tuple[Dataset, int]:
    head = io.BytesIO(data)
    dataset = dcmread(head, stop_before_pixels=True)
    return dataset, head.tell()


def _kept(dataset: Dataset) -> dict[int, str]:
    return {tag: repr(dataset[tag].value) for tag in sorted(receive._WANTED) if tag in dataset}


def _tags(dataset: Header) -> object:
    try:
        return read_tags(dataset)
    except InvalidInstance as exc:  # a real file with hashes for UIDs: refused alike
        return exc.reason


def _assert_read_as_pydicom(data: bytes) -> Dataset:
    raw = read_header(data, True, receive._WANTED)
    assert raw is not None, "the plain case was declined"
    header, position = raw
    expected, expected_position = _pydicom(data)
    assert position == expected_position
    assert header.transfer_syntax_uid == expected.file_meta.TransferSyntaxUID
    assert _kept(header.dataset()) == _kept(expected)
    assert _tags(header) == _tags(expected)  # the names decoded by tags, not by pydicom
    return header.dataset()


@pytest.mark.skipif(not REAL, reason=f"no real DICOM files under {SHARED_DICOM}")
def test_real_files_in_little_endian_are_read_as_pydicom_reads_them() -> None:
    plain = 0
    for path in REAL:
        data = path.read_bytes()
        syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if not syntax.is_deflated and syntax.is_little_endian:
            _assert_read_as_pydicom(data)
            plain += 1
        else:
            assert read_header(data, True, receive._WANTED) is None, path.name
    assert plain >= len(REAL) - 2  # the deflated file, at most one more


@pytest.mark.parametrize("syntax", sorted(PLAIN_SYNTAXES))
def test_a_ct_slice_in_either_vr_is_read_as_pydicom_reads_it(syntax: str) -> None:
    dataset = _assert_read_as_pydicom(_encode(_ct(), syntax))
    assert dataset.file_meta.TransferSyntaxUID == syntax


def test_names_in_a_declared_character_set_are_decoded_as_pydicom_does() -> None:
    ds = _ct(SpecificCharacterSet="ISO_IR 144", PatientName="Иванов^Иван")
    dataset = _assert_read_as_pydicom(_encode(ds))
    assert str(dataset.PatientName) == "Иванов^Иван"


def _nested(depth: int) -> Sequence:
    """A sequence ``depth`` deep, each sequence and item of undefined length."""
    item = Dataset()
    item.is_undefined_length_sequence_item = True
    item.CodeValue = "T-D3000"
    if depth > 1:
        item.ConceptNameCodeSequence = _nested(depth - 1)
        item["ConceptNameCodeSequence"].is_undefined_length = True
    return Sequence([item])


def _with_sequence(depth: int) -> Dataset:
    # Referenced Study Sequence (0008,1110) comes before Patient's Name and the UIDs.
    ds = _ct(ReferencedStudySequence=_nested(depth))
    ds["ReferencedStudySequence"].is_undefined_length = True
    return ds


def test_sequences_of_undefined_length_before_the_wanted_elements_are_walked() -> None:
    data = _encode(_with_sequence(3))
    assert data.count(b"\xfe\xff\xdd\xe0") == 3  # sequence delimiters: undefined lengths
    _assert_read_as_pydicom(data)
    _assert_read_as_pydicom(_encode(_with_sequence(3), ImplicitVRLittleEndian))


def test_sequences_nested_deeper_than_walked_go_to_pydicom() -> None:
    data = _encode(_with_sequence(12))
    assert read_header(data, True, receive._WANTED) is None
    dataset, _position = receive._read_header(io.BytesIO(data))  # pydicom reads it instead
    assert isinstance(dataset, Dataset) and dataset.PatientID == _ct().PatientID


def test_a_dataset_encoded_otherwise_than_its_meta_says_goes_to_pydicom() -> None:
    implicit = _encode(_ct(), ImplicitVRLittleEndian)
    explicit = _encode(_ct())
    meta_end = 132 + 12 + int.from_bytes(implicit[140:144], "little")
    # The implicit file's meta (which names implicit VR) before the explicit file's dataset.
    lying = implicit[:meta_end] + explicit[132 + 12 + int.from_bytes(explicit[140:144], "little") :]
    assert read_header(lying, True, receive._WANTED) is None
    assert read_header(implicit, True, receive._WANTED) is not None


def test_big_endian_deflate_and_headerless_files_go_to_pydicom() -> None:
    assert read_header(_encode(_ct(), ExplicitVRBigEndian), True, receive._WANTED) is None
    deflated = next((p for p in REAL if "deflate" in p.name.lower()), None)
    if deflated is not None:
        assert read_header(deflated.read_bytes(), True, receive._WANTED) is None
    without_preamble = _encode(_ct())[128:]
    assert read_header(without_preamble, True, receive._WANTED) is None


def test_a_header_running_past_the_prefix_is_declined() -> None:
    data = _encode(_ct(ImageComments="x" * 4000))
    cut = data[:2000]  # inside Image Comments
    assert read_header(cut, False, receive._WANTED) is None
    # A prefix that ends exactly between elements, without Pixel Data, is not the whole file.
    dataset, position = _pydicom(data)
    assert read_header(data[:position], False, receive._WANTED) is None
    whole = read_header(data[:position], True, receive._WANTED)
    assert whole is not None and whole[1] == position
    assert whole[0].get("PatientID") == dataset.PatientID


def test_an_item_where_an_element_should_be_is_declined() -> None:
    data = bytearray(_encode(_ct()))
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    data[meta_end : meta_end + 4] = b"\xfe\xff\x00\xe0"  # the first element's tag → an item
    assert read_header(bytes(data), True, receive._WANTED) is None


def test_only_the_wanted_elements_are_kept() -> None:
    raw = read_header(_encode(_ct(ImageComments="not read")), True, frozenset({0x00100020}))
    assert raw is not None
    header, _position = raw
    assert set(header.elements) <= {0x00100020, 0x00080005}
    assert "ImageComments" not in header.dataset() and header.dataset().PatientID


CHARSETS = [
    None,
    b"ISO_IR 100",
    b"ISO_IR 144 ",
    b"ISO_IR 192",
    b"ISO_IR 6",
    b"GB18030 ",
    b"",
    b" ISO_IR 100",  # a leading space: pydicom corrects the term, with a warning
    b"ISO IR 100",  # misspelled: corrected, with a warning
    b"ISO_IR 999",  # unknown: the default, with a warning
    b"\\ISO 2022 IR 87",  # code extensions: escape sequences switch sets
    b"ISO 2022 IR 6\\ISO 2022 IR 144",
    b"ISO_IR 192\\ISO_IR 100",  # a stand-alone set with another: a warning
    b"ISO_IR 1\xe900",
]


@pytest.mark.parametrize("charset", CHARSETS, ids=[repr(c) for c in CHARSETS])
def test_the_text_codec_is_pydicoms_first_or_left_to_pydicom(charset: bytes | None) -> None:
    dataset = Dataset()
    if charset is not None:
        tag = Tag(0x00080005)
        dataset._dict[tag] = RawDataElement(tag, "CS", len(charset), charset, 0, False, True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        encodings = dataset._character_set
    first = encodings if isinstance(encodings, str) else encodings[0]
    codec = header._codec(charset)
    if codec is not None:  # taken as plain: exactly pydicom's, and pydicom said nothing
        assert codec == first and not caught
        assert isinstance(encodings, str) or len(encodings) == 1
    # None leaves the decoding to pydicom, whatever it makes of the set: always safe.
    # The plain sets of Russian archives are taken.
    assert header._codec(None) and header._codec(b"ISO_IR 144") and header._codec(b"ISO_IR 192")
