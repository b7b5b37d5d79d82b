"""An external device's service as a peer: the one place its address, AE titles, URL,
token and TLS become a :class:`~pacs_adapters.dicom_scu.Peer` (``protocol: dicom``) or a
:class:`~pacs_adapters.dicomweb.StowTarget` (``protocol: stow``), for the C-ECHO at
registration and for sending studies (:mod:`gateway.external.send`)."""

from __future__ import annotations

from collections.abc import Mapping

from models.manifest import DeviceManifest, ManifestError
from pacs_adapters.dicom_scu import Peer, ScuError, echo
from pacs_adapters.dicomweb import StowTarget
from pacs_adapters.tls import TlsConfigError, client_context

ECHO_TIMEOUT_S = 5.0  # registration waits at most this for a vendor that is down


class NoVendorToken(Exception):
    """The environment variable the manifest names for the vendor's token is unset."""


def vendor_peer(manifest: DeviceManifest, calling_ae: str, timeout_s: float) -> Peer:
    """The vendor's SCP; raises :class:`TlsConfigError` when its TLS files are unusable."""
    service = manifest.service
    if service.host is None or service.port is None or service.ae_title is None:
        raise ManifestError(f"{manifest.key} is reached by {service.protocol}, not C-STORE")
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


def vendor_stow(
    manifest: DeviceManifest, environ: Mapping[str, str], timeout_s: float
) -> StowTarget:
    """The vendor's DICOMweb endpoint with its token read from ``environ`` (the process
    environment, passed in); raises :class:`NoVendorToken` when it is unset or empty."""
    service = manifest.service
    if service.url is None or service.token_env is None:
        raise ManifestError(f"{manifest.key} is reached by {service.protocol}, not STOW-RS")
    token = environ.get(service.token_env, "")
    if not token:  # the variable's name only: never its value
        raise NoVendorToken(f"{service.token_env} is not set: no token for {manifest.key}")
    tls = service.tls
    pair = (tls.client_cert, tls.client_key) if tls else (None, None)
    return StowTarget(
        url=str(service.url).rstrip("/"),
        token=token,
        timeout_s=timeout_s,
        ca_file=tls.ca_file if tls else None,
        client_cert=(pair[0], pair[1]) if pair[0] and pair[1] else None,
    )


def echo_warning(manifest: DeviceManifest, calling_ae: str) -> str | None:
    """None when the vendor's SCP answers a C-ECHO with success (or the device is reached
    by STOW-RS, which registration does not probe); else what went wrong."""
    service = manifest.service
    if service.protocol != "dicom":
        return None
    try:
        status = echo(vendor_peer(manifest, calling_ae, ECHO_TIMEOUT_S))
    except (ScuError, TlsConfigError, OSError) as exc:
        return f"{manifest.key}: C-ECHO to {service.ae_title} failed: {exc}"
    if status != 0:
        return f"{manifest.key}: C-ECHO to {service.ae_title} answered 0x{status:04X}"
    return None
