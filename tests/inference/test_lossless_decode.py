"""Every lossless transfer syntax the gateway accepts decodes bit for bit: JPEG lossless
(process 14, first-order prediction), JPEG-LS lossless, JPEG 2000 lossless, HTJ2K lossless
and RLE — on the CPU path (``gateway.inference.decode``), and through nvImageCodec where it
is installed and a GPU is present (JPEG-LS and RLE have no GPU decoder: they stay on the CPU).

Synthetic images are encoded by independent encoders (``tests.services.lossless``: DCMTK's
dcmcjpeg for JPEG lossless, OpenJPH's ojph_compress for HTJ2K, pydicom's plugins for the
rest) and compared with the array they were made from; the real scanner files with DCMTK's
own decompression (dcmdjpeg, dcmdrle), and real JPEG 2000 lossless on the GPU with the CPU."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.uid import UID

from gateway.inference import gpu_decode
from gateway.inference.decode import decode_image, read_dataset
from tests.services import require_shared_data, require_tool
from tests.services.lossless import LOSSLESS, encoded, part10, synthetic

BACKENDS = ("cpu", "nvimgcodec")


@pytest.fixture(autouse=True)
def _cpu_unless_asked() -> Iterator[None]:
    """The CPU path here is the CPU path, whatever this machine has."""
    gpu_decode.select_backend("cpu")
    yield
    gpu_decode.select_backend("auto")


def as_received(ds: Dataset) -> Dataset:
    """Through bytes, as the worker reads an instance from the object store."""
    return read_dataset(part10(ds))


def decoder(backend: str, syntax: UID) -> Callable[[Dataset], np.ndarray]:
    """The gateway's CPU path (modality LUT included: no rescale here, so the pixels are the
    stored values as float32), or nvImageCodec alone; skips where it cannot run."""
    if backend == "cpu":
        return lambda ds: decode_image(ds).pixels
    if syntax not in gpu_decode.GPU_SYNTAXES:
        pytest.skip(f"nvImageCodec has no {syntax.name} decoder: it stays on the CPU")
    reason = gpu_decode.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return gpu_decode.nvimgcodec_pixels


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["ct", "dx"])
@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda syntax: syntax.keyword)
def test_synthetic_lossless_decodes_bit_exactly(syntax: UID, kind: str, backend: str) -> None:
    decode = decoder(backend, syntax)
    ds = synthetic(kind)
    original = ds.pixel_array
    compressed = as_received(encoded(ds, syntax))
    assert compressed.file_meta.TransferSyntaxUID == syntax
    decoded = np.asarray(decode(compressed))
    assert decoded.shape == original.shape
    np.testing.assert_array_equal(decoded, original.astype(decoded.dtype))
    assert np.array_equal(decoded.astype(np.float64), original.astype(np.float64))


def _dcmtk_reference(path: Path, tool: str, folder: Path) -> np.ndarray:
    target = folder / f"{path.stem}-native.dcm"
    subprocess.run([require_tool(tool), str(path), str(target)], check=True, capture_output=True)
    return np.asarray(pydicom.dcmread(target).pixel_array)


# Real files in a lossless syntax, each with where its uncompressed original comes from
# (DCMTK decodes JPEG and RLE, not JPEG 2000: the real JPEG 2000 lossless files are held to
# the CPU's array below, and JPEG 2000 itself to the original by the synthetic images).
REAL = {
    "CT_Philips_Ingenuity_JPEGLossless.dcm": lambda p, f: _dcmtk_reference(p, "dcmdjpeg", f),
    "MG_GE_SenographeEssential_RMLO_ForPresentation_JPEGLossless.dcm": lambda p, f: (
        _dcmtk_reference(p, "dcmdjpeg", f)
    ),
    "CT1_RLE_frags.dcm": lambda p, f: _dcmtk_reference(p, "dcmdrle", f),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_lossless_files_decode_bit_exactly(name: str, backend: str, tmp_path: Path) -> None:
    path = require_shared_data() / name
    ds = read_dataset(path.read_bytes())
    decode = decoder(backend, ds.file_meta.TransferSyntaxUID)
    original = REAL[name](path, tmp_path)
    raw = np.asarray(ds.pixel_array) if backend == "cpu" else np.asarray(decode(ds))
    assert raw.dtype == original.dtype and raw.shape == original.shape
    np.testing.assert_array_equal(raw, original)
    if backend == "cpu":  # and the gateway's own decode: the same values, as float32
        pixels = decode(ds)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        np.testing.assert_array_equal(pixels, (original * slope + intercept).astype(np.float32))


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["CT_693_J2KR.dcm", "CR_tibia_Fuji_J2KR.dcm"])
def test_the_gpu_decodes_real_jpeg_2000_lossless_as_the_cpu_does(name: str) -> None:
    """Real JPEG 2000 lossless files have no uncompressed original here: the CPU's array is
    the reference (the CPU decoder itself is held to originals above)."""
    reason = gpu_decode.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    ds = read_dataset((require_shared_data() / name).read_bytes())
    np.testing.assert_array_equal(gpu_decode.nvimgcodec_pixels(ds), ds.pixel_array)


def test_with_the_gpu_chosen_and_absent_a_worker_refuses_to_start() -> None:
    reason = gpu_decode.unavailable_reason()
    if reason is None:
        assert gpu_decode.select_backend("gpu") is True
        return
    with pytest.raises(gpu_decode.GpuDecodeUnavailable, match="decode_backend is gpu, but"):
        gpu_decode.select_backend("gpu")
    assert gpu_decode.select_backend("auto") is False  # auto falls back to the CPU
