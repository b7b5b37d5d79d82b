"""The AI device registry: validated manifests and ONNX files, versions, enablement.

Registering is all-or-nothing: the manifest and the model are validated first
(``models.onnx_check``), the ONNX file is written to the object store, and only then is the
row committed. A bad manifest or model leaves the registry as it was. An external device
(``runtime: external``) has no model file: its manifest is validated the same way, its
row's digest is the manifest's, and its service is asked for a C-ECHO — one that does not
answer is a warning, never a refusal (the vendor may be down today). A manifest with
``precision: fp16`` has its fp16 variant checked against fp32 as well (refused beyond its
``fp16_tolerance``), and the variant that passed is stored beside the model
(``model.fp16.onnx``) for GPU workers to run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from gateway.devices.endpoint import echo_warning
from gateway.errors import GatewayError, StorageError
from gateway.index.database import Database
from gateway.index.object_store import ObjectStore
from gateway.index.tables import DeviceMode, DeviceRegionRow, DeviceRow, utcnow
from models.manifest import DeviceManifest, ManifestError, load_manifest

log = logging.getLogger(__name__)


class RegistryError(GatewayError):
    """Registration or lookup failed; the message names the device and the problem."""


class RegisteredDevice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest: DeviceManifest
    onnx_key: str
    enabled: bool
    regions: list[str]

    @property
    def key(self) -> str:
        return self.manifest.key


class DeviceRegistry:
    def __init__(self, db: Database, store: ObjectStore, calling_ae: str = "AIGW") -> None:
        self.db = db
        self.store = store
        self.calling_ae = calling_ae  # ours, toward an external device's service (C-ECHO)
        self._manifests: dict[str, DeviceManifest] = {}
        self._manifests_lock = threading.Lock()

    def register(self, manifest_path: Path) -> tuple[RegisteredDevice, bool]:
        """Validate and register; returns the device and whether it was new. Registering the
        same id, version and file again changes nothing; the same id and version with another
        file is refused (publish a new version instead)."""
        manifest, data, digest, fp16 = self._validated(manifest_path)
        key = f"models/{manifest.id}/{manifest.version}/model.onnx" if data is not None else ""
        with self.db.session() as session:
            existing = session.scalars(
                select(DeviceRow).where(
                    DeviceRow.device_id == manifest.id, DeviceRow.version == manifest.version
                )
            ).one_or_none()
            if existing is not None:
                if existing.sha256 != digest:
                    what = "ONNX file" if data is not None else "manifest"
                    raise RegistryError(
                        f"{manifest.key} is already registered with another {what} "
                        f"(sha256 {existing.sha256[:12]}…); publish a new version"
                    )
                return self._public(existing, session), False
            try:
                if data is not None:
                    self.store.put(key, data)
                if fp16 is not None:
                    self.store.put(fp16_key(key), fp16)
            except StorageError as exc:
                raise RegistryError(f"{manifest.key}: cannot store the model: {exc}") from exc
            row = DeviceRow(
                device_id=manifest.id,
                version=manifest.version,
                name=manifest.name,
                vendor=manifest.vendor,
                group=manifest.group.value,
                registration_number=manifest.registration.number if manifest.registration else None,
                manifest=manifest.model_dump(mode="json"),
                onnx_key=key,
                sha256=digest,
                enabled=True,
                registered_at=utcnow(),
            )
            session.add(row)
            session.flush()
            log.info("device registered", extra={"device": manifest.key, "sha256": digest})
            public = self._public(row, session), True
        if manifest.is_external:
            warning = echo_warning(manifest, self.calling_ae)
            if warning:
                log.warning("external device does not answer", extra={"reason": warning})
        return public

    @staticmethod
    def _validated(
        manifest_path: Path,
    ) -> tuple[DeviceManifest, bytes | None, str, bytes | None]:
        """The manifest, its model (None for an external device), the digest its row
        keeps (the model's, or for an external device the manifest's own) and the fp16
        variant that passed its check (precision fp16 only)."""
        # onnx (and its ml_dtypes) costs seconds to import: only registration needs it, not
        # every CLI command and API process that imports the registry.
        from models.onnx_check import ModelError, validate_model

        try:
            manifest = load_manifest(manifest_path)
            if manifest.is_external:
                canonical = json.dumps(manifest.model_dump(mode="json"), sort_keys=True)
                return manifest, None, hashlib.sha256(canonical.encode()).hexdigest(), None
            data = (manifest_path.parent / manifest.onnx.file).read_bytes()
            report = validate_model(manifest, data)
            if report.fp16_deviation is not None:
                log.info(
                    "fp16 variant within tolerance",
                    extra={"device": manifest.key, "fp16_deviation": report.fp16_deviation},
                )
            return manifest, data, report.sha256, report.fp16_model
        except (ManifestError, ModelError) as exc:
            raise RegistryError(f"{manifest_path}: {exc}") from exc
        except OSError as exc:
            raise RegistryError(f"{manifest_path}: cannot read the ONNX file: {exc}") from exc

    def register_folder(self, folder: Path) -> list[str]:
        """Register every ``*/manifest.yaml`` under ``folder`` (the reference zoo, a vendor
        drop); returns the keys newly registered. One bad device does not stop the others."""
        added = []
        for path in sorted(folder.glob("*/manifest.yaml")):
            try:
                device, new = self.register(path)
            except RegistryError as exc:
                log.error(
                    "device not registered", extra={"manifest": str(path), "reason": str(exc)}
                )
                continue
            if new:
                added.append(device.key)
        return added

    def set_enabled(self, device_key: str, enabled: bool) -> None:
        device_id, version = split_key(device_key)
        with self.db.session() as session:
            row = session.scalars(
                select(DeviceRow).where(
                    DeviceRow.device_id == device_id, DeviceRow.version == version
                )
            ).one_or_none()
            if row is None:
                raise RegistryError(f"no device {device_key}")
            row.enabled = enabled

    def set_regions(
        self,
        enablement: dict[str, list[str]],
        start_modes: dict[str, dict[str, DeviceMode]] | None = None,
    ) -> None:
        """Replace per-region enablement (region code → device ids) with ``enablement``, and
        the mode each device's versions start in there (region → device id → mode; shadow
        where none is named: :mod:`gateway.devices.modes`)."""
        start_modes = start_modes or {}
        with self.db.session() as session:
            session.execute(delete(DeviceRegionRow))
            for region, device_ids in enablement.items():
                for device_id in dict.fromkeys(device_ids):
                    mode = start_modes.get(region, {}).get(device_id, DeviceMode.SHADOW)
                    session.add(
                        DeviceRegionRow(
                            device_id=device_id, region_code=region, start_mode=mode.value
                        )
                    )

    def devices(self) -> list[RegisteredDevice]:
        with self.db.session() as session:
            rows = session.scalars(select(DeviceRow).order_by(DeviceRow.device_id, DeviceRow.id))
            return [self._public(row, session) for row in rows]

    def get(self, device_key: str) -> RegisteredDevice:
        device_id, version = split_key(device_key)
        with self.db.session() as session:
            query = select(DeviceRow).where(DeviceRow.device_id == device_id)
            if version:
                query = query.where(DeviceRow.version == version)
            row = session.scalars(query.order_by(DeviceRow.id.desc())).first()
            if row is None:
                raise RegistryError(f"no device {device_key}")
            return self._public(row, session)

    def manifest(self, device_key: str) -> DeviceManifest:
        """The manifest of ``id@version``, remembered: a registered version never changes
        (another file under the same id and version is refused). Workers ask once per job."""
        if "@" not in device_key:  # "the newest version" can change
            return self.get(device_key).manifest
        with self._manifests_lock:
            found = self._manifests.get(device_key)
        if found is None:
            found = self.get(device_key).manifest
            with self._manifests_lock:
                self._manifests[device_key] = found
        return found

    def active_for_region(self, region: str) -> list[DeviceManifest]:
        """The newest enabled version of each device enabled in ``region``."""
        newest: dict[str, RegisteredDevice] = {}
        for device in self.devices():
            if device.enabled and region in device.regions:
                newest[device.manifest.id] = device  # rows come oldest first per id
        return [device.manifest for device in newest.values()]

    def model_bytes(self, device_key: str) -> bytes:
        return self.store.get(self.get(device_key).onnx_key)

    def fp16_loader(self, manifest: DeviceManifest) -> Callable[[], bytes] | None:
        """Reads the device's checked fp16 variant; None where its manifest keeps fp32."""
        if manifest.precision != "fp16":
            return None
        key = manifest.key
        return lambda: self.store.get(fp16_key(self.get(key).onnx_key))

    @staticmethod
    def _public(row: DeviceRow, session: Session) -> RegisteredDevice:
        regions = session.scalars(
            select(DeviceRegionRow.region_code).where(DeviceRegionRow.device_id == row.device_id)
        ).all()
        return RegisteredDevice(
            manifest=DeviceManifest.model_validate(row.manifest),
            onnx_key=row.onnx_key,
            enabled=row.enabled,
            regions=sorted(regions),
        )


def fp16_key(onnx_key: str) -> str:
    """Where a model's fp16 variant is stored: beside it."""
    return onnx_key.removesuffix(".onnx") + ".fp16.onnx"


def split_key(device_key: str) -> tuple[str, str | None]:
    """``ID@VERSION`` → (id, version); ``ID`` → (id, None)."""
    device_id, _, version = device_key.partition("@")
    return device_id, version or None
