"""The parts of the external stage on their own: the manifest's external section, the
registration of a device without a model file (and its C-ECHO warning), de-identification
of a real image (in place from the shared data) and of a synthetic study with a СНИЛС, and
the vendor's TID 1500 findings read back; a ``stow`` vendor's section and its token."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pydicom
import pytest
import yaml

from gateway.demo.synthetic import chest_xray_study
from gateway.devices.endpoint import NoVendorToken, echo_warning, vendor_stow
from gateway.devices.registry import DeviceRegistry, RegistryError
from gateway.external.deidentify import (
    BurnedInAnnotation,
    Pseudonyms,
    deidentify,
    identifying_left,
    originals_of,
)
from gateway.external.tid1500 import read_findings
from gateway.index.database import Database
from gateway.index.object_store import FolderStore
from models.manifest import DeviceManifest, ManifestError, load_manifest
from tests.external.devices import manifest, write_device
from tests.external.vendor import sr_of
from tests.services.processes import free_port

DATA = Path("/work/shared/data/dicom")
REAL_DX = DATA / "DX_thorax_Fuji_ForPresentation_small.dcm"


def test_an_external_manifest_has_its_service_and_no_model(tmp_path: Path) -> None:
    device = DeviceManifest.model_validate(manifest(104))
    assert device.is_external and device.service.deadline_s == 60
    assert device.service.deidentify is True and device.input_spec is None
    with pytest.raises(ManifestError):
        _ = device.input
    onnx = {"file": "model.onnx", "sha256": "0" * 64}
    for broken in (
        {**manifest(104), "onnx": onnx},  # external with a model file
        {k: v for k, v in manifest(104).items() if k != "external"},  # no section
        {**manifest(104), "runtime": "onnx"},  # an onnx device with an external section
        {**manifest(104), "external": {**manifest(104)["external"], "pacs": 1}},  # type: ignore[dict-item]
    ):
        path = tmp_path / "manifest.yaml"
        path.write_text(yaml.safe_dump(broken, allow_unicode=True), "utf-8")
        with pytest.raises(ManifestError):
            load_manifest(path)


def test_registering_an_external_device_stores_no_model_and_warns_when_it_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    db.migrate()
    store = FolderStore(tmp_path / "objects")
    registry = DeviceRegistry(db, store, "AIGW")
    folder = write_device(tmp_path / "devices", free_port())
    with caplog.at_level(logging.WARNING):
        device, new = registry.register(folder / "vendor-cxr" / "manifest.yaml")
    assert new and device.onnx_key == "" and device.manifest.is_external
    assert "external device does not answer" in caplog.text
    assert registry.register(folder / "vendor-cxr" / "manifest.yaml")[1] is False
    write_device(tmp_path / "devices", free_port(), deadline_s=5)  # same version, changed
    with pytest.raises(RegistryError, match="another manifest"):
        registry.register(folder / "vendor-cxr" / "manifest.yaml")


def test_a_stow_vendor_has_a_url_and_its_token_from_the_environment(tmp_path: Path) -> None:
    stowed = manifest(
        104, protocol="stow", url="https://ai.vendor.example/dicom-web/", token_env="T"
    )
    device = DeviceManifest.model_validate(stowed)
    assert device.service.host is None and echo_warning(device, "AIGW") is None
    target = vendor_stow(device, {"T": "s3cret"}, 5.0)
    assert (target.url, target.token) == ("https://ai.vendor.example/dicom-web", "s3cret")
    assert "s3cret" not in repr(target)
    with pytest.raises(NoVendorToken, match="T is not set"):
        vendor_stow(device, {}, 5.0)
    local = {**stowed["external"], "url": "http://127.0.0.1:8042/dicom-web"}  # type: ignore[dict-item]
    assert DeviceManifest.model_validate({**stowed, "external": local}).service.url is not None
    external: dict[str, object] = stowed["external"]  # type: ignore[assignment]
    for broken in (
        {**external, "url": "ftp://ai.vendor.example/"},
        {**external, "url": "https://user:s3cret@ai.vendor.example/"},  # no inline secret
        {**external, "url": "https://ai.vendor.example/?token=s3cret"},
        {**external, "token_env": "lower-case"},
        {k: v for k, v in external.items() if k != "token_env"},
        {**external, "host": "127.0.0.1"},  # an SCP's address for a STOW-RS vendor
        {**external, "url": "http://ai.vendor.example/", "tls": {"ca_file": "ca.pem"}},
        {**external, "url": "http://ai.vendor.example/dicom-web"},  # in clear off this host
        {**manifest(104)["external"], "url": "https://ai.vendor.example/"},  # type: ignore[dict-item]
    ):
        path = tmp_path / "manifest.yaml"
        document = {**manifest(104), "external": broken}
        path.write_text(yaml.safe_dump(document, allow_unicode=True), "utf-8")
        with pytest.raises(ManifestError):
            load_manifest(path)


@pytest.mark.skipif(not REAL_DX.is_file(), reason="shared DICOM data absent")
def test_a_real_image_leaves_without_identity_and_with_its_characteristics() -> None:
    dataset = pydicom.dcmread(REAL_DX)  # read in place, changed only in memory
    dataset.PatientName = "Иванова^Мария^Петровна"
    dataset.PatientID = "IRK-0042"
    dataset.PatientBirthDate = "19580314"
    dataset.StudyDate = "20240611"
    dataset.PatientSex = "F"
    del dataset.PatientAge  # computed from the birth date before that goes
    dataset.InstitutionName = "ГБУЗ ИГКБ № 1"
    dataset.StudyDescription = "ФЛГ Иванова"
    dataset.ImageComments = "пациентка Иванова, палата 3"
    originals = originals_of(dataset)
    made = Pseudonyms()
    before_study, before_sop = str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID)
    deidentify(dataset, "seed-a", made, accept_burned_in=False)
    assert identifying_left(dataset, originals) == []
    assert dataset.PatientSex == "F" and dataset.PatientAge == "066Y"
    assert dataset.PatientBirthDate == "" and "InstitutionName" not in dataset
    assert "StudyDescription" not in dataset and "ImageComments" not in dataset  # cleaned
    assert dataset.Manufacturer == pydicom.dcmread(REAL_DX).Manufacturer  # device kept
    assert dataset.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in dataset.DeidentificationMethodCodeSequence}
    assert {"113100", "113105", "113108", "113109"} <= codes
    assert made.uids[before_study] == dataset.StudyInstanceUID != before_study
    assert made.kinds[before_sop] == "instance"
    assert not any(element.tag.is_private for element in dataset)


def test_the_same_seed_gives_the_same_pseudonyms_and_burned_in_text_stays() -> None:
    study = chest_xray_study(5, size=(64, 64))
    original = study.datasets[0]
    snils = str(original.OtherPatientIDsSequence[0].PatientID)
    first, second, other = (copy.deepcopy(original) for _ in range(3))
    deidentify(first, "s1", Pseudonyms(), False)
    deidentify(second, "s1", Pseudonyms(), False)
    deidentify(other, "s2", Pseudonyms(), False)
    assert (first.SOPInstanceUID, first.PatientID) == (second.SOPInstanceUID, second.PatientID)
    assert first.SOPInstanceUID != other.SOPInstanceUID
    assert snils not in str(first) and "OtherPatientIDsSequence" not in first
    assert identifying_left(first, originals_of(original)) == []
    burned = copy.deepcopy(original)
    burned.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotation):
        deidentify(burned, "s1", Pseudonyms(), False)
    deidentify(burned, "s1", Pseudonyms(), True)  # a manifest that accepts it


def test_the_vendors_tid1500_findings_are_read_as_ours() -> None:
    study = chest_xray_study(6, size=(64, 64))
    device = DeviceManifest.model_validate(manifest(104))
    (finding,) = read_findings(sr_of(list(study.datasets)), device)
    assert finding.label_ru == "Очаговое образование лёгкого"
    assert finding.positive and finding.probability == 0.91 and finding.threshold == 0.5
    assert finding.location.sop_instance_uid == study.datasets[0].SOPInstanceUID
    assert finding.location.centre == (35.0, 25.0)


def test_anything_identifying_that_the_profile_missed_is_found() -> None:
    study = chest_xray_study(7, size=(64, 64))
    original = study.datasets[0]
    dataset = copy.deepcopy(original)
    dataset.DerivationDescription = str(original.PatientID)  # free text nobody cleans
    deidentify(dataset, "s", Pseudonyms(), False)
    assert identifying_left(dataset, originals_of(original)) == ["DerivationDescription"]
