"""TLS contexts for DICOM peers, per PS3.15 Annex B and the BCP 195 profile: TLS 1.2 or
later, forward-secret AEAD suites only, no compression, no renegotiation.

The same profile serves the gateway's DICOM TLS listener and its outbound C-STORE; the
private key files are read once, here, and a bad file fails with the path that is wrong.
"""

from __future__ import annotations

import ssl
from pathlib import Path

# TLS 1.2 suites allowed by BCP 195 (RFC 9325 §4.2): ECDHE/DHE key exchange, AES-GCM or
# ChaCha20-Poly1305. TLS 1.3 suites are all acceptable and are configured separately.
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"


class TlsConfigError(Exception):
    """A certificate, key or CA file cannot be used; the message names the file."""


def server_context(cert_file: Path, key_file: Path, client_ca_file: Path | None) -> ssl.SSLContext:
    """The listener's context; with ``client_ca_file`` a client certificate signed by one of
    its CAs is required (the handshake fails without one)."""
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _load_chain(context, cert_file, key_file)
    if client_ca_file is not None:
        _load_ca(context, client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca_file: Path | None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    *,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A context for connecting to a TLS peer: its certificate is verified against
    ``ca_file`` (the system's CAs when None); ``cert_file`` is our client certificate."""
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = check_hostname
    context.verify_mode = ssl.CERT_REQUIRED
    if ca_file is not None:
        _load_ca(context, ca_file)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert_file is not None:
        _load_chain(context, cert_file, key_file)
    return context


def _hardened(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def _load_chain(context: ssl.SSLContext, cert_file: Path, key_file: Path | None) -> None:
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        where = f"{cert_file}" + (f" / {key_file}" if key_file else "")
        raise TlsConfigError(f"cannot load certificate and key {where}: {exc}") from exc


def _load_ca(context: ssl.SSLContext, ca_file: Path) -> None:
    try:
        context.load_verify_locations(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"cannot load CA certificates {ca_file}: {exc}") from exc
