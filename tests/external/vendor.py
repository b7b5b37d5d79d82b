"""A stand-in for an AI vendor's service: a pynetdicom SCP on a free loopback port that
receives the series, notes every identifying attribute that reached it, and answers (when
told to) with an SR TID 1500 (highdicom) and an SC referencing what it received, sent by
C-STORE to the gateway under its own calling AE."""

from __future__ import annotations

import io
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset, dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from pacs_adapters.requestor import associate

VENDOR_AE = "VENDOR_AI"
NODULE = hd.sr.CodedConcept("427359005", "SCT", "Pulmonary nodule")
# What must never reach the vendor, as attributes (the birth date: with a value).
FORBIDDEN = (
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "InstitutionName",
    "InstitutionAddress",
    "IssuerOfPatientID",
)


@dataclass
class StandInVendor:
    port: int
    gateway_port: int
    originals: set[str]  # the patient's name, IDs, СНИЛС, birth date, institution
    answer: bool = True
    calling_ae: str = VENDOR_AE
    received: list[Dataset] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    answers: list[int | None] = field(default_factory=list)
    tls: ssl.SSLContext | None = None  # the vendor's SCP over DICOM TLS
    # A vendor outside the region's network refuses what would identify the patient; one
    # trusted with identity (deidentify: false) takes the study as it is.
    refuses_identity: bool = True
    _server: Any = None

    def start(self) -> None:
        ae = AE(ae_title=VENDOR_AE)
        ae.supported_contexts = StoragePresentationContexts
        ae.add_supported_context(Verification)
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            ssl_context=self.tls,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_RELEASED, self._released)],
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _store(self, event: Any) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        found = identifying_in(dataset, self.originals)
        self.violations += found
        self.received.append(dataset)
        return 0xC000 if found and self.refuses_identity else 0x0000

    def _released(self, event: Any) -> None:
        if self.answer and self.received:
            threading.Thread(target=self.send_results, daemon=True).start()

    def send_results(
        self, extra_reference: str | None = None, calling_ae: str | None = None
    ) -> None:
        """The SR and the SC back to the gateway; statuses in ``answers`` (None: refused
        association)."""
        time.sleep(0.1)
        objects = [sr_of(self.received), sc_of(self.received[0], extra_reference)]
        ae = AE(ae_title=calling_ae or self.calling_ae)
        ae.add_requested_context(Comprehensive3DSRStorage, [ExplicitVRLittleEndian])
        ae.add_requested_context(SecondaryCaptureImageStorage, [ExplicitVRLittleEndian])
        assoc = associate(ae, "127.0.0.1", self.gateway_port, ae_title="AIGW")
        if not assoc.is_established:
            self.answers += [None] * len(objects)
            return
        try:
            for dataset in objects:
                response = assoc.send_c_store(dataset)
                self.answers.append(int(response.Status) if "Status" in response else None)
        finally:
            assoc.release()

    def stow_results(self, url: str, token: str) -> Any:
        """The SR and the SC back by STOW-RS instead; the Store Instances Response."""
        client = DICOMwebClient(url, headers={"Authorization": f"Bearer {token}"})
        objects = [sr_of(self.received), sc_of(self.received[0], None)]
        return client.store_instances([_as_file(ds) for ds in objects])


def identifying_in(dataset: Dataset, originals: set[str]) -> list[str]:
    """The attributes of ``dataset`` that would identify the patient to the vendor."""
    found = [k for k in FORBIDDEN if k in dataset]
    if dataset.get("PatientBirthDate"):
        found.append("PatientBirthDate")

    def visit(ds: Dataset, element: Any) -> None:
        if element.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "DA", "CS", "UC"):
            values = element.value if isinstance(element.value, list) else [element.value]
            for value in values:
                text = str(value)
                if any(original in text for original in originals):
                    found.append(element.keyword)

    dataset.walk(visit)
    if any(e.tag.is_private for e in dataset):
        found.append("private attributes")
    return found


def sr_of(received: list[Dataset]) -> Dataset:
    """A TID 1500 measurement report: one nodule, probability 0.91, outlined on the image."""
    image = received[0]
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array(
            [[10.0, 20.0], [40.0, 20.0], [40.0, 50.0], [10.0, 50.0], [10.0, 20.0]]
        ),
        source_image=hd.sr.SourceImageForRegion(str(image.SOPClassUID), str(image.SOPInstanceUID)),
    )
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="nodule 1"),
        referenced_region=region,
        finding_type=NODULE,
        measurements=[
            hd.sr.Measurement(name=codes.DCM.Probability, value=0.91, unit=codes.UCUM.NoUnits)
        ],
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=NODULE, value=codes.SCT.Present)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_person_context=None,
            observer_device_context=hd.sr.ObserverContext(
                observer_type=codes.DCM.Device,
                observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                    uid=generate_uid(), name="Vendor AI"
                ),
            ),
        ),
        procedure_reported=hd.sr.CodedConcept("24627-2", "LN", "Chest X-ray"),
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=received,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Vendor",
        # The patient's attributes come from the evidence: their character set with them
        # (Cyrillic names reach a vendor trusted with identity).
        specific_character_set=image.get("SpecificCharacterSet"),
    )
    return sr


def sc_of(image: Dataset, extra_reference: str | None) -> Dataset:
    """A secondary capture with the finding marked, referencing the image it marks (and,
    to be refused, ``extra_reference``)."""
    sc = Dataset()
    for keyword in (
        "SpecificCharacterSet",
        "PatientName",
        "PatientID",
        "PatientSex",
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
    ):
        if keyword in image:
            sc[keyword] = image[keyword]
    sc.SOPClassUID = SecondaryCaptureImageStorage
    sc.SOPInstanceUID = generate_uid()
    sc.SeriesInstanceUID = generate_uid()
    sc.Modality, sc.ConversionType, sc.SeriesNumber, sc.InstanceNumber = "OT", "WSD", 902, 1
    references = [str(image.SOPInstanceUID)] + ([extra_reference] if extra_reference else [])
    sc.SourceImageSequence = [_reference(str(image.SOPClassUID), uid) for uid in references]
    sc.Rows = sc.Columns = 64
    sc.SamplesPerPixel, sc.PhotometricInterpretation = 1, "MONOCHROME2"
    sc.BitsAllocated, sc.BitsStored, sc.HighBit, sc.PixelRepresentation = 8, 8, 7, 0
    sc.PixelData = np.full((64, 64), 128, dtype=np.uint8).tobytes()
    sc.file_meta = FileMetaDataset()
    sc.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sc.file_meta.MediaStorageSOPClassUID = sc.SOPClassUID
    sc.file_meta.MediaStorageSOPInstanceUID = sc.SOPInstanceUID
    return sc


def _reference(sop_class: str, sop_uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_uid
    return item


def _as_file(dataset: Dataset) -> Dataset:
    """The object as a Part-10 file reads back (preamble and all): what STOW-RS carries."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return dcmread(buffer)
