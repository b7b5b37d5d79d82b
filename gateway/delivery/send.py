"""Sending one outbox row: the stored result (or the notice), to its destination, by its
protocol."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.delivery.destinations import (
    Destination,
    Destinations,
    DicomDestination,
    HttpDestination,
    OrthancDestination,
    ResultKind,
    StowDestination,
    secret,
)
from gateway.delivery.outbox import Claim, DeliveryError, Undeliverable
from gateway.errors import StorageError
from gateway.index.database import Database
from gateway.index.object_store import ObjectStore
from gateway.index.tables import NoticeRow, ResultRow
from pacs_adapters.dicom_scu import Peer, store_instance
from pacs_adapters.dicomweb import stow_instance
from pacs_adapters.monitoring_http import post_notice
from pacs_adapters.orthanc_rest import upload_instance
from pacs_adapters.regional_http import post_semd
from pacs_adapters.tls import TlsConfigError, client_context


@dataclass(frozen=True)
class _Payload:
    kind: str
    data: bytes
    meta: dict[str, object]


@dataclass(frozen=True)
class _Notice:
    key: str
    document: dict[str, object]


class Delivery:
    """The outbox's sender (:data:`gateway.delivery.outbox.Sender`)."""

    def __init__(
        self,
        db: Database,
        store: ObjectStore,
        destinations: Destinations,
        calling_ae: str,
        timeout_s: float,
    ) -> None:
        self.db, self.store, self.destinations = db, store, destinations
        self.calling_ae, self.timeout_s = calling_ae, timeout_s
        self._tls_contexts: dict[str, ssl.SSLContext] = {}

    def __call__(self, claim: Claim) -> str:
        destination = self.destinations.by_name.get(claim.destination)
        if destination is None:  # retried: the operator may put it back in the file
            raise DeliveryError(f"destination {claim.destination} is no longer configured")
        if claim.notice_id is not None:
            return self._send_notice(destination, self._notice(claim.notice_id))
        return self._send(destination, self._payload(claim))

    def _tls(self, destination: DicomDestination) -> ssl.SSLContext | None:
        """The destination's TLS context, built once (its files are read then)."""
        if not destination.tls:
            return None
        if destination.name not in self._tls_contexts:
            try:
                self._tls_contexts[destination.name] = client_context(
                    destination.ca_file,
                    destination.client_cert,
                    destination.client_key,
                    check_hostname=destination.check_hostname,
                )
            except TlsConfigError as exc:  # retried: the operator may fix the files
                raise DeliveryError(f"{destination.name}: {exc}") from exc
        return self._tls_contexts[destination.name]

    def _notice(self, notice_id: int) -> _Notice:
        with self.db.session() as session:
            notice = session.get(NoticeRow, notice_id)
            if notice is None:
                raise Undeliverable(f"notice {notice_id} is gone")
            return _Notice(notice.key, dict(notice.payload))

    def _send_notice(self, destination: Destination, notice: _Notice) -> str:
        if not isinstance(destination, HttpDestination) or destination.kinds != [
            ResultKind.MONITORING
        ]:  # the file changed since the row was queued; the operator may change it back
            raise DeliveryError(f"destination {destination.name} no longer takes notices")
        return post_notice(
            str(destination.url),
            notice.document,
            notice.key,
            secret(destination.token_env),
            self.timeout_s,
            client_cert=_cert(destination),
            ca_file=destination.ca_file,
        )

    def _payload(self, claim: Claim) -> _Payload:
        with self.db.session() as session:
            result = session.get(ResultRow, claim.result_id)
            if result is None or result.object_key is None:
                raise Undeliverable(f"result {claim.result_id} has no stored object")
            key, kind, meta = result.object_key, result.kind, dict(result.meta or {})
        if not self.store.exists(key):
            raise Undeliverable(f"stored result {key} is missing from the object store")
        try:
            return _Payload(kind, self.store.get(key), meta)
        except StorageError as exc:
            raise DeliveryError(str(exc)) from exc

    def _send(self, destination: Destination, payload: _Payload) -> str:
        timeout = self.timeout_s
        if isinstance(destination, DicomDestination):
            peer = Peer(
                destination.host,
                destination.port,
                destination.ae_title,
                calling_ae=self.calling_ae,
                timeout_s=timeout,
                tls=self._tls(destination),
            )
            status = store_instance(payload.data, peer)
            return f"C-STORE 0x{status:04X}" + (" over TLS" if peer.tls else "")
        if isinstance(destination, OrthancDestination):
            password = secret(destination.password_env)
            return upload_instance(
                str(destination.url), payload.data, destination.username, password, timeout
            )
        if isinstance(destination, StowDestination):
            return stow_instance(
                str(destination.url), payload.data, secret(destination.token_env), timeout
            )
        assert isinstance(destination, HttpDestination)
        metadata = payload.meta.get("metadata")
        if not isinstance(metadata, dict):
            raise Undeliverable("the SEMD result carries no metadata")
        return post_semd(
            str(destination.url),
            payload.data,
            metadata,
            secret(destination.token_env),
            timeout,
            client_cert=_cert(destination),
            ca_file=destination.ca_file,
        )


def _cert(destination: HttpDestination) -> tuple[Path, Path | None] | None:
    if destination.client_cert is None:
        return None
    return destination.client_cert, destination.client_key
