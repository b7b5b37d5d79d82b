"""DICOM TLS on the listener side: the context built from settings, and who a verified
client certificate says the peer is.

A source in ``sources.yaml`` may name the subject CN or the SHA-256 fingerprint of its
client certificate; Python can only ask for a client certificate that it also verifies,
so either needs ``dicom_tls_client_ca_file`` (for a pinned self-signed certificate, that
file is the certificate itself).
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass
from typing import cast

from gateway.errors import ConfigError
from gateway.settings import Settings
from pacs_adapters.tls import TlsConfigError, server_context


@dataclass(frozen=True)
class TlsIdentity:
    """The verified client certificate of a TLS connection (``subject`` is its CN)."""

    subject: str | None
    fingerprint_sha256: str | None

    def describe(self) -> str:
        return f"CN={self.subject}" if self.subject else "a certificate without CN"


NO_CERTIFICATE = TlsIdentity(subject=None, fingerprint_sha256=None)


def listener_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS listener's context, or None when ``dicom_tls_port`` is 0."""
    if not settings.dicom_tls_port:
        return None
    assert settings.dicom_tls_cert_file and settings.dicom_tls_key_file  # settings check this
    try:
        return server_context(
            settings.dicom_tls_cert_file,
            settings.dicom_tls_key_file,
            settings.dicom_tls_client_ca_file,
        )
    except TlsConfigError as exc:
        raise ConfigError(str(exc)) from exc


def identity_of(connection: ssl.SSLSocket) -> TlsIdentity:
    """What the peer's certificate says, once the handshake is done."""
    der = connection.getpeercert(binary_form=True)
    if not der:
        return NO_CERTIFICATE
    fingerprint = hashlib.sha256(der).hexdigest()
    details = connection.getpeercert() or {}
    subject = cast(tuple[tuple[tuple[str, str], ...], ...], details.get("subject", ()))
    names = [value for rdn in subject for key, value in rdn if key == "commonName"]
    return TlsIdentity(subject=names[0] if names else None, fingerprint_sha256=fingerprint)


def normalise_fingerprint(value: str) -> str:
    """``AB:CD:…`` or ``abcd…`` → 64 lower-case hex digits; ValueError otherwise."""
    digits = value.replace(":", "").strip().lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        raise ValueError(f"not a SHA-256 fingerprint (64 hex digits): {value!r}")
    return digits
