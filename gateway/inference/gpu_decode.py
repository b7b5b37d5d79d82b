"""Compressed frames decoded on the GPU with NVIDIA nvImageCodec, where it is installed and
a GPU is present; everything else stays with the CPU decoders (pylibjpeg, pyjpegls).

nvImageCodec (``nvidia-nvimgcodec-cu13`` with ``nvidia-nvjpeg2k-cu13`` and ``nvidia-nvjpeg``)
decodes JPEG baseline and extended, JPEG lossless (nvJPEG: process 14, first-order
prediction), JPEG 2000 and HTJ2K on the GPU. JPEG-LS and RLE have no GPU decoder there and
always take the CPU path; so do colour images (every study type the devices read is
greyscale, and pydicom's colour-space handling of each codec is not worth re-deriving). Its
CPU-only backends decode none of the lossless syntaxes (measured: a CPU_ONLY decoder gives
nothing for JPEG lossless or JPEG 2000), so without a GPU it is not used at all.

nvImageCodec is plugged into pydicom as a decoding plugin (:func:`_decode_frame`): pydicom
still parses the frames and turns the decoded bytes into the array (signedness, bits
stored, shape) exactly as it does for pylibjpeg, so both paths give the same array — the
lossless syntaxes bit for bit (``tests/inference/test_lossless_decode.py``). A frame
nvImageCodec cannot decode (another JPEG predictor, a damaged stream) goes to the CPU
decoders, which decode it or name what is wrong with it.

The choice (``gpu.decode_backend``): ``auto`` uses the GPU when both are there, ``cpu``
never, ``gpu`` insists (a worker without them refuses to start). It is made once per
process — the worker's and each decode child's — and the decoder, with its CUDA context, is
made on first use, never at import (the decode pool's fork server imports this module).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
from pydicom import Dataset, uid
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

PLUGIN = "nvimgcodec"
GPU_SYNTAXES = frozenset(
    {
        uid.JPEGBaseline8Bit,
        uid.JPEGExtended12Bit,
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
        uid.JPEG2000Lossless,
        uid.JPEG2000,
        uid.HTJ2KLossless,
        uid.HTJ2KLosslessRPCL,
        uid.HTJ2K,
    }
)
WHEELS = "nvidia-nvimgcodec-cu13 nvidia-nvjpeg2k-cu13 nvidia-nvjpeg"
# pydicom's plugin interface: what a plugin needs when it is unavailable.
DECODER_DEPENDENCIES = {syntax: tuple(WHEELS.split()) for syntax in GPU_SYNTAXES}


class GpuDecodeUnavailable(GatewayError):
    """``gpu.decode_backend: gpu`` on a node without nvImageCodec or without a GPU."""


class _Process:
    """This process's choice and decoder (one per process: a CUDA context each)."""

    def __init__(self) -> None:
        self.choice = "auto"
        self.device_id = 0
        self.resolved: bool | None = None  # None: not yet decided
        self.decoder: Any = None
        self.lock = threading.Lock()
        self.decoding = threading.Lock()  # one frame at a time through the decoder


_process = _Process()


def unavailable_reason(device_id: int = 0) -> str | None:
    """Why nvImageCodec cannot decode on the GPU here; None when it can."""
    return _open_decoder(device_id)[1]


def _open_decoder(device_id: int) -> tuple[Any, str | None]:
    """A decoder on ``device_id``, or None and why not. Its CUDA context is made now, so a
    decode child makes it before its address-space ceiling is set (CUDA reserves far more
    address space than it uses)."""
    try:
        from nvidia import nvimgcodec  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None, f"nvImageCodec is not installed ({WHEELS}; on CUDA 12 the -cu12 builds)"
    try:
        return nvimgcodec.Decoder(device_id=device_id), None
    except Exception as exc:  # its CUDA errors are RuntimeError; nothing narrower is promised
        return None, f"nvImageCodec found no usable GPU {device_id}: {str(exc)[:160]}"


def select_backend(choice: str, device_id: int = 0) -> bool:
    """Decide this process's decode backend now; True when it is the GPU. ``gpu`` on a node
    that cannot raises :class:`GpuDecodeUnavailable` with the reason."""
    with _process.lock:
        _process.choice, _process.device_id = choice, device_id
        _process.resolved, _process.decoder = None, None
    return _resolved()


def gpu_decoding() -> bool:
    """Whether this process decodes the GPU syntaxes on the GPU (decided on first use)."""
    return _resolved()


def _resolved() -> bool:
    with _process.lock:
        if _process.resolved is None:
            _process.resolved = _resolve(_process.choice, _process.device_id)
        return _process.resolved


def _resolve(choice: str, device_id: int) -> bool:
    if choice == "cpu":
        return False
    decoder, reason = _open_decoder(device_id)
    if reason is not None:
        if choice == "gpu":
            raise GpuDecodeUnavailable(f"gpu.decode_backend is gpu, but {reason}")
        log.info("decoding on the CPU", extra={"reason": reason})
        return False
    _process.decoder = decoder
    _register_plugin()
    log.info("decoding on the GPU with nvImageCodec", extra={"device_id": device_id})
    return True


def _register_plugin() -> None:
    for syntax in sorted(GPU_SYNTAXES):
        decoder = get_decoder(syntax)
        if PLUGIN not in decoder.available_plugins:
            decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))


def gpu_pixels(dataset: Dataset) -> np.ndarray | None:
    """The dataset's pixel array decoded on the GPU; None where this process does not decode
    on the GPU, the syntax or the image is not one it takes, or nvImageCodec failed (the
    caller's CPU decoders then decode it, or name the fault)."""
    meta = getattr(dataset, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if syntax not in GPU_SYNTAXES or int(dataset.get("SamplesPerPixel", 1) or 1) != 1:
        return None
    if not gpu_decoding():
        return None
    try:
        return nvimgcodec_pixels(dataset)
    except Exception as exc:  # any failure here is retried on the CPU, which judges it
        log.debug("GPU decode failed; decoding on the CPU", extra={"error": str(exc)[:200]})
        return None


def nvimgcodec_pixels(dataset: Dataset) -> np.ndarray:
    """The pixel array through the nvImageCodec plugin only (the tests' direct use)."""
    syntax = dataset.file_meta.TransferSyntaxUID
    if syntax not in GPU_SYNTAXES:
        raise ValueError(f"nvImageCodec does not decode {syntax.name}")
    with _process.lock:
        _register_plugin()
    array, _ = get_decoder(syntax).as_array(dataset, decoding_plugin=PLUGIN)
    return array


def _decoder() -> Any:
    with _process.lock:
        if _process.decoder is None:
            decoder, reason = _open_decoder(_process.device_id)
            if decoder is None:
                raise GpuDecodeUnavailable(str(reason))
            _process.decoder = decoder
        return _process.decoder


# --- pydicom's decoding plugin interface -------------------------------------------------


def is_available(syntax: str) -> bool:
    """pydicom asks when the plugin is added: registered only where the GPU decodes."""
    return syntax in GPU_SYNTAXES


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytearray:
    """One frame decoded by nvImageCodec, as the bytes pydicom makes the array from."""
    from nvidia import nvimgcodec  # type: ignore[import-not-found, unused-ignore]

    decoder = _decoder()
    params = nvimgcodec.DecodeParams(
        color_spec=nvimgcodec.ColorSpec.UNCHANGED, allow_any_depth=True
    )
    with _process.decoding:  # nvImageCodec does not promise a decoder shared by threads
        image = decoder.decode(nvimgcodec.CodeStream(bytes(src)), params=params)
    if image is None:
        raise ValueError(f"nvImageCodec could not decode this {runner.transfer_syntax.name} frame")
    frame = np.ascontiguousarray(np.asarray(image.cpu()))
    # As pydicom's pylibjpeg plugin does: the container is what the codec returned, 8 or
    # 16 bits, whatever BitsAllocated says (a 12-bit JPEG 2000 comes back as 16).
    runner.set_option("bits_allocated", 8 * frame.dtype.itemsize)
    return bytearray(frame.tobytes())
