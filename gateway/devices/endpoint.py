"""An external device's service as a DICOM peer: the one place its address, AE titles and
TLS become a :class:`~pacs_adapters.dicom_scu.Peer`, for the C-ECHO at registration and for
sending studies (:mod:`gateway.external.send`)."""

from __future__ import annotations

from models.manifest import DeviceManifest
from pacs_adapters.dicom_scu import Peer, ScuError, echo
from pacs_adapters.tls import TlsConfigError, client_context

ECHO_TIMEOUT_S = 5.0  # registration waits at most this for a vendor that is down


def vendor_peer(manifest: DeviceManifest, calling_ae: str, timeout_s: float) -> Peer:
    """The vendor's SCP; raises :class:`TlsConfigError` when its TLS files are unusable."""
    service = manifest.service
    tls = None
    if service.tls is not None:
        tls = client_context(service.tls.ca_file, service.tls.client_cert, service.tls.client_key)
    return Peer(
        host=service.host,
        port=service.port,
        called_ae=service.ae_title,
        calling_ae=calling_ae,
        timeout_s=timeout_s,
        tls=tls,
    )


def echo_warning(manifest: DeviceManifest, calling_ae: str) -> str | None:
    """None when the vendor's SCP answers a C-ECHO with success; else what went wrong."""
    try:
        status = echo(vendor_peer(manifest, calling_ae, ECHO_TIMEOUT_S))
    except (ScuError, TlsConfigError, OSError) as exc:
        return f"{manifest.key}: C-ECHO to {manifest.service.ae_title} failed: {exc}"
    if status != 0:
        return f"{manifest.key}: C-ECHO to {manifest.service.ae_title} answered 0x{status:04X}"
    return None
