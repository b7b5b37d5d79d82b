"""Certificates for the TLS tests, made by the test: a CA, a server certificate for
127.0.0.1, client certificates with a chosen CN, and a second CA nobody trusts.

RSA keys: DCMTK's default BCP 195 profile negotiates ECDHE-RSA suites on TLS 1.2.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    fingerprint_sha256: str


@dataclass(frozen=True)
class _Authority:
    name: str
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    path: Path


class Pki:
    """A CA (``ca``) and everything it signs, as PEM files under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._ca = _authority(folder, "aigw-test-ca")
        self._rogue = _authority(folder, "rogue-ca")
        self.ca = self._ca.path
        self.server = self.issue("aigw.test", server=True)

    def issue(self, common_name: str, *, server: bool = False, rogue: bool = False) -> Issued:
        """A certificate for ``common_name`` signed by our CA (or the rogue one)."""
        authority = self._rogue if rogue else self._ca
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        builder = _base(common_name, key, authority).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(authority.key, hashes.SHA256())
        stem = self.folder / f"{'rogue-' if rogue else ''}{common_name}"
        return Issued(
            _write_cert(stem.with_suffix(".crt"), cert),
            _write_key(stem.with_suffix(".key"), key),
            cert.fingerprint(hashes.SHA256()).hex(),
        )


def _authority(folder: Path, name: str) -> _Authority:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Authority(name, key, cert, _write_cert(folder / f"{name}.crt", cert))


def _base(
    common_name: str, key: rsa.RSAPrivateKey, authority: _Authority
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path
