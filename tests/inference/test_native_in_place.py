"""Native Pixel Data read in place (gateway.inference.native): the array pydicom's
``pixel_array`` gives, for every layout it takes, without copying the stored bytes; and
what it does not take is left to pydicom."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from gateway.inference.decode import DecodeError, decode_image, decode_volume, read_dataset
from gateway.inference.native import DEFER_BYTES, native_pixels
from gateway.inference.pixel_checks import PixelBudget, check_job
from tests.services import require_shared_data

NATIVE_FILES = [
    "DX_chest_NIH_SC_uncompressed.dcm",
    "DX_thorax_Fuji_ForPresentation_small.dcm",
    "CT_693_UNCI.dcm",
]


def _image(
    values: np.ndarray,
    bits_stored: int,
    syntax: UID = ExplicitVRLittleEndian,
    photometric: str = "MONOCHROME2",
    intercept: float | None = None,
) -> bytes:
    """Part-10 bytes of an image of ``values`` (frames × rows × columns, or rows ×
    columns), the stored words as given (bits above Bits Stored included)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = values.shape[-2:]
    if values.ndim == 3:
        ds.NumberOfFrames = values.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = values.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = int(values.dtype.kind == "i")
    if intercept is not None:
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    big = syntax == ExplicitVRBigEndian
    ds.PixelData = values.astype(values.dtype.newbyteorder(">" if big else "<")).tobytes()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)  # encoded as the transfer syntax says
    return buffer.getvalue()


def _words(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)


LAYOUTS = [  # every value longer than DEFER_BYTES, so that it is left in the stored bytes
    ("uint16", 16, (200, 180)),
    ("uint16", 12, (200, 180)),  # words with noise above bit 12: cleared
    ("int16", 12, (200, 180)),  # and sign-extended from bit 11
    ("int16", 16, (200, 180)),
    ("uint8", 8, (257, 257)),  # odd length: a pad byte
    ("uint8", 6, (257, 257)),
    ("int8", 5, (300, 221)),
    ("uint16", 10, (3, 150, 160)),  # multi-frame
]


@pytest.mark.parametrize(("dtype", "bits_stored", "shape"), LAYOUTS)
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_in_place_gives_what_pixel_array_gives(
    dtype: str, bits_stored: int, shape: tuple[int, ...], syntax: UID
) -> None:
    blob = _image(_words(dtype, shape), bits_stored, syntax)
    expected = pydicom.dcmread(BytesIO(blob)).pixel_array
    assert len(blob) > DEFER_BYTES
    for in_place in (True, False):  # value deferred and read in place, or read by pydicom
        dataset = read_dataset(blob, in_place=in_place)
        deferred = dataset.get_item("PixelData", keep_deferred=True).value is None
        assert deferred == in_place
        pixels = native_pixels(dataset)
        assert pixels is not None
        assert pixels.dtype == expected.dtype and pixels.shape == expected.shape
        assert np.array_equal(pixels, expected)


def test_clean_words_are_a_view_on_the_stored_bytes() -> None:
    rng = np.random.default_rng(3)
    blob = _image(rng.integers(0, 4096, (256, 200)).astype(np.uint16), 12)  # > DEFER_BYTES
    dataset = read_dataset(blob, in_place=True)
    check_job([dataset], PixelBudget())  # the check reads the value's length, not the value
    assert dataset.get_item("PixelData", keep_deferred=True).value is None
    pixels = native_pixels(dataset)
    assert pixels is not None and not pixels.flags.writeable
    assert np.shares_memory(pixels, np.frombuffer(blob, dtype=np.uint8))


def test_words_with_bits_above_bits_stored_are_corrected_on_a_copy() -> None:
    words = np.full((8, 8), 0xF00F, dtype=np.uint16)
    blob = _image(words, 12)
    pixels = native_pixels(read_dataset(blob, in_place=True))
    assert pixels is not None and (pixels == 0x000F).all()
    assert not np.shares_memory(pixels, np.frombuffer(blob, dtype=np.uint8))


@pytest.mark.parametrize(
    ("syntax", "photometric"),
    [(ExplicitVRBigEndian, "MONOCHROME2"), (ExplicitVRLittleEndian, "PALETTE COLOR")],
)
def test_what_is_not_plain_is_left_to_pydicom(syntax: UID, photometric: str) -> None:
    blob = _image(_words("uint16", (16, 16)), 16, syntax, photometric)
    assert native_pixels(read_dataset(blob, in_place=True)) is None


def test_a_short_value_is_still_refused_by_the_checks() -> None:
    blob = _image(_words("uint16", (64, 64)), 16)
    dataset = read_dataset(blob[:-100], in_place=True)
    with pytest.raises(DecodeError, match="native Pixel Data of"):
        check_job([dataset], PixelBudget())


def test_decoded_images_keep_integers_and_their_intercept() -> None:
    words = _words("uint16", (48, 40)) & 0x0FFF
    blob = _image(words, 12, intercept=-1024)
    image = decode_image(read_dataset(blob, in_place=True))
    assert image.stored.dtype == np.uint16 and image.intercept == -1024.0
    expected = decode_image(read_dataset(blob)).pixels
    assert image.pixels.dtype == np.float32
    assert np.array_equal(image.pixels, expected)
    assert np.array_equal(expected, words.astype(np.float32) - 1024)


def test_a_volume_decodes_the_same_in_place() -> None:
    from gateway.demo.synthetic import ct_chest_study

    study = ct_chest_study(seed=2, n_slices=16, size=(256, 256), with_localizer=False)
    blobs = []
    for ds in study.datasets:
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        blobs.append(buffer.getvalue())
    in_place = decode_volume([read_dataset(b, in_place=True) for b in blobs])
    read = decode_volume([read_dataset(b) for b in blobs])
    assert np.array_equal(in_place.voxels, read.voxels)
    assert in_place.sop_instance_uids == read.sop_instance_uids


@pytest.mark.shared_data
@pytest.mark.parametrize("name", NATIVE_FILES)
def test_real_native_files_read_in_place(name: str) -> None:
    blob = (require_shared_data() / name).read_bytes()
    expected = pydicom.dcmread(BytesIO(blob)).pixel_array
    pixels = native_pixels(read_dataset(blob, in_place=True))
    assert pixels is not None and np.array_equal(pixels, expected)
    assert np.array_equal(
        decode_image(read_dataset(blob, in_place=True)).pixels,
        decode_image(read_dataset(blob)).pixels,
    )
