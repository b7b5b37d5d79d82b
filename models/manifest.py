"""The device manifest: what a registered AI medical device is, accepts, expects and answers.

One YAML file per device version, validated by this schema before anything is registered.
A manifest is untrusted input: every field is checked, unknown fields are refused, and
cross-field rules (service codes match study types, thresholds in [0, 1], ONNX names unique)
are enforced here so later stages can rely on them.

``runtime: onnx`` (the default) is a model file the gateway runs; ``runtime: external`` is
the vendor's own service, reached over DICOM (the ``external`` section): it has no model
file and no input tensor, and its ``outputs`` name the labels the vendor reports.
"""

from __future__ import annotations

import ipaddress
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    StringConstraints,
    model_validator,
)

from models.study_types import SERVICE_CODES, StudyType
from models.yaml_file import load_model

Identifier = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{1,63}$")]
Version = Annotated[str, StringConstraints(pattern=r"^\d+\.\d+\.\d+([.-][A-Za-z0-9]+)*$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
AETitle = Annotated[str, StringConstraints(min_length=1, max_length=16, pattern=r"^[ -\[\]-~]+$")]
# How far fp16 may move any output (a probability; larger outputs relative to their largest
# value): models.precision. The reference devices' fp16 variants measure 0.0001 (chest X-ray)
# to 0.014 (CT chest) on the check inputs, so 0.02 passes them and refuses a model whose
# scores fp16 moves by more than a fiftieth.
DEFAULT_FP16_TOLERANCE = 0.02
OnnxName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,127}$")]


Photometric = Literal["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422"]


class ManifestError(Exception):
    """The manifest is invalid; the message names the field and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceGroup(StrEnum):
    IMAGE_ANALYSIS = "image_analysis"
    EMK_DATA_ANALYSIS = "emk_data_analysis"


class Registration(_Strict):
    """Roszdravnadzor registration certificate (РУ)."""

    number: str = Field(min_length=3, max_length=64, description="e.g. РЗН 2022/17xxx")
    date: date


class StudyTypeEntry(_Strict):
    type: StudyType
    service_code: str = Field(pattern=r"^\d{7}$", description="НСИ 1471 service code")

    @model_validator(mode="after")
    def _code_matches_type(self) -> StudyTypeEntry:
        expected = SERVICE_CODES[self.type][0]
        if self.service_code != expected:
            raise ValueError(f"service code for {self.type} is {expected}, not {self.service_code}")
        return self


class Range(_Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}")
        return self

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class Acceptance(_Strict):
    """What the device can read; the router never sends it anything else."""

    modalities: list[Annotated[str, StringConstraints(pattern=r"^[A-Z]{2,4}$")]] = Field(
        min_length=1
    )
    body_parts: list[str] = Field(default_factory=list, description="Empty: any BodyPartExamined")
    slice_thickness_mm: Range | None = None
    min_instances: int = Field(default=1, ge=1)
    adult_only: bool = True
    photometric: tuple[Photometric, ...] = ("MONOCHROME1", "MONOCHROME2")


class Window(_Strict):
    center: float
    width: float = Field(gt=0)


class InputSpec(_Strict):
    """The tensor the ONNX graph takes: batch first, then channels, then space."""

    name: OnnxName
    dims: Literal[2, 3]
    channels: int = Field(default=1, ge=1, le=4)
    size: list[int] = Field(description="[H, W] for 2D, [D, H, W] for 3D; resized to exactly this")
    keep_aspect: bool = Field(default=True, description="2D: letterbox instead of stretching")
    window: Window | None = Field(
        default=None, description="Intensity window (HU for CT); None: 0.5–99.5 percentiles"
    )
    normalisation: Literal["unit", "zscore"] = "unit"

    @model_validator(mode="after")
    def _size_matches_dims(self) -> InputSpec:
        if len(self.size) != self.dims or any(s < 8 or s > 2048 for s in self.size):
            raise ValueError(f"size {self.size} must have {self.dims} values in 8..2048")
        return self


class Label(_Strict):
    code: str = Field(min_length=1, max_length=16)
    scheme: str = Field(default="SCT", max_length=16, description="Coding scheme designator")
    ru: str = Field(min_length=1)
    en: str = Field(min_length=1)
    threshold: float = Field(ge=0, le=1, description="Operating point: positive when p ≥ this")


class OutputKind(StrEnum):
    CLASSIFICATION = "classification"  # [N, L] probabilities
    HEATMAP = "heatmap"  # [N, L, h, w] localisation map for the classification labels
    SEGMENTATION = "segmentation"  # [N, L, (d,) h, w] per-voxel probabilities
    DETECTION = "detection"  # [N, L, h, w] centre heatmap + [N, 2, h, w] box size (CenterNet)


class OutputSpec(_Strict):
    name: OnnxName
    kind: OutputKind
    labels: list[Label] = Field(default_factory=list)
    size_output: OnnxName | None = Field(default=None, description="detection: box-size map")


class Provenance(_Strict):
    training_data: str = Field(min_length=3)
    clinical_use: bool
    notice_ru: str = Field(min_length=3)
    notice_en: str = Field(min_length=3)
    build: str | None = Field(default=None, description="How the ONNX file was produced")


class OnnxFile(_Strict):
    file: str = Field(description="Path relative to the manifest")
    sha256: Sha256

    @model_validator(mode="after")
    def _no_escape(self) -> OnnxFile:
        if Path(self.file).is_absolute() or ".." in Path(self.file).parts:
            raise ValueError("onnx file must be a relative path inside the manifest's folder")
        if not Path(self.file).parts or Path(self.file).name in ("", "."):
            raise ValueError("onnx file must name a file")
        return self


class Priors(_Strict):
    """The patient's earlier studies the device wants beside the current one: found at the
    source's archive (study-level C-FIND by Patient ID) and fetched before the job runs."""

    max: int = Field(default=1, ge=1, le=5, description="At most this many, newest first.")
    within_years: int = Field(
        default=5, ge=1, le=50, description="Studied at most this long before the current."
    )
    same_modality: bool = Field(
        default=True,
        description="Only studies with a modality the device accepts (ModalitiesInStudy); "
        "their series of other modalities are not handed over either.",
    )


class Runtime(StrEnum):
    ONNX = "onnx"  # a model file the gateway holds and runs
    EXTERNAL = "external"  # the vendor's own service, reached over the network


class ExternalTls(_Strict):
    """DICOM TLS toward the vendor's SCP: its CA, and our client certificate if it asks."""

    ca_file: Path
    client_cert: Path | None = None
    client_key: Path | None = None

    @model_validator(mode="after")
    def _pair(self) -> ExternalTls:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key come together")
        return self


def _loopback(host: str | None) -> bool:
    if host in ("localhost", None):
        return host is not None
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ExternalService(_Strict):
    """Where the vendor's service is, and what it is held to. ``dicom`` names the vendor's
    SCP (host, port, ae_title); ``stow`` its DICOMweb base URL and the environment variable
    holding its bearer token — the name only, so the secret is never in a manifest."""

    protocol: Literal["dicom", "stow"] = Field(
        default="dicom",
        description="dicom: C-STORE out; stow: STOW-RS out. Results come back by C-STORE "
        "or STOW-RS either way",
    )
    host: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:_-]+$"
    )
    port: int | None = Field(default=None, ge=1, le=65535)
    ae_title: AETitle | None = Field(default=None, description="The vendor's SCP")
    url: HttpUrl | None = Field(default=None, description="The vendor's DICOMweb base URL")
    token_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]{0,63}$",
        description="The environment variable holding the vendor's bearer token",
    )
    calling_ae: AETitle = Field(description="The AE title the vendor sends results back with")
    tls: ExternalTls | None = None
    deadline_s: float = Field(default=900, gt=0, le=7 * 86400)
    deidentify: bool = Field(
        default=True, description="false only for a vendor inside the region's own network"
    )
    accept_burned_in: bool = Field(
        default=False,
        description="Send series whose BurnedInAnnotation is YES (text in the pixels)",
    )

    @model_validator(mode="after")
    def _what_the_protocol_needs(self) -> ExternalService:
        scp = {"host": self.host, "port": self.port, "ae_title": self.ae_title}
        web = {"url": self.url, "token_env": self.token_env}
        needed, foreign = (scp, web) if self.protocol == "dicom" else (web, scp)
        missing = [name for name, value in needed.items() if value is None]
        extra = [name for name, value in foreign.items() if value is not None]
        if missing:
            raise ValueError(f"protocol {self.protocol} needs {', '.join(missing)}")
        if extra:
            raise ValueError(f"protocol {self.protocol} takes no {', '.join(extra)}")
        if self.url is not None and (self.url.username or self.url.password or self.url.query):
            raise ValueError("url carries no credentials and no query: the token is token_env's")
        if self.url is not None and self.tls is not None and self.url.scheme != "https":
            raise ValueError("tls needs an https url")
        if self.url is not None and self.url.scheme != "https" and not _loopback(self.url.host):
            # The series (de-identified, still medical data) and the bearer token would
            # cross the network in clear: plain http only to a service on this host.
            raise ValueError("a vendor's url off this host must be https")
        return self

    @property
    def endpoint(self) -> str:
        """The vendor's service as logs and reasons name it (no secret in it)."""
        if self.protocol == "stow":
            return str(self.url)
        return f"{self.ae_title}@{self.host}:{self.port}"


class DeviceManifest(_Strict):
    # ``input`` and ``onnx`` are read through properties (every ONNX stage may rely on
    # them); an external device has neither, so the fields themselves are optional.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    id: Identifier
    version: Version
    name: str = Field(min_length=1, max_length=128)
    name_ru: str = Field(min_length=1, max_length=128)
    vendor: str = Field(min_length=1, max_length=128)
    registration: Registration | None = Field(
        default=None, description="РУ; absent only for research devices not for clinical use"
    )
    group: DeviceGroup = DeviceGroup.IMAGE_ANALYSIS
    study_types: list[StudyTypeEntry] = Field(min_length=1)
    accepts: Acceptance
    runtime: Runtime = Runtime.ONNX
    input_spec: InputSpec | None = Field(default=None, alias="input")
    outputs: list[OutputSpec] = Field(min_length=1)
    onnx_file: OnnxFile | None = Field(default=None, alias="onnx")
    external: ExternalService | None = None
    provenance: Provenance
    priors: Priors | None = Field(
        default=None, description="Fetch the patient's prior studies for each job; None: none."
    )
    precision: Literal["fp32", "fp16"] = Field(
        default="fp32",
        description="fp16: a GPU worker may run the model's fp16 variant (models.precision), "
        "once registration found it within fp16_tolerance of fp32",
    )
    fp16_tolerance: float = Field(
        default=DEFAULT_FP16_TOLERANCE,
        gt=0,
        le=1,
        description="precision fp16: the largest absolute difference of any output between "
        "the fp16 variant and the fp32 model on the check inputs (ignored with fp32)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DeviceManifest:
        if self.registration is None and self.provenance.clinical_use:
            raise ValueError("a device for clinical use needs its registration (РУ)")
        self._runtime_sections()
        if self.precision == "fp16" and self.runtime == Runtime.EXTERNAL:
            raise ValueError("precision fp16 is for a model the gateway runs, not runtime external")
        names = [o.name for o in self.outputs]
        names += [self.input_spec.name] if self.input_spec else []
        names += [o.size_output for o in self.outputs if o.size_output]
        if len(names) != len(set(names)):
            raise ValueError(f"ONNX input/output names must be unique: {names}")
        primary = [o for o in self.outputs if o.kind != OutputKind.HEATMAP]
        if not primary or not any(o.labels for o in primary):
            raise ValueError(
                "at least one classification/segmentation/detection output with labels"
            )
        for output in self.outputs:
            if output.kind == OutputKind.DETECTION and not output.size_output:
                raise ValueError(f"detection output {output.name} needs size_output")
        return self

    def _runtime_sections(self) -> None:
        if self.runtime == Runtime.EXTERNAL:
            if self.external is None:
                raise ValueError("runtime external needs its external section")
            if self.onnx_file is not None or self.input_spec is not None:
                raise ValueError("an external device has no onnx file and no input tensor")
        else:
            if self.external is not None:
                raise ValueError("an external section needs runtime: external")
            if self.onnx_file is None or self.input_spec is None:
                raise ValueError("runtime onnx needs its onnx file and input")

    @property
    def key(self) -> str:
        return f"{self.id}@{self.version}"

    @property
    def is_external(self) -> bool:
        return self.runtime == Runtime.EXTERNAL

    @property
    def input(self) -> InputSpec:
        """The ONNX graph's input; only ONNX devices have one (the stages that read it never
        see an external device's job)."""
        if self.input_spec is None:
            raise ManifestError(f"{self.key} runs as its vendor's service: no input tensor")
        return self.input_spec

    @property
    def onnx(self) -> OnnxFile:
        if self.onnx_file is None:
            raise ManifestError(f"{self.key} runs as its vendor's service: no ONNX file")
        return self.onnx_file

    @property
    def service(self) -> ExternalService:
        """An external device's service."""
        if self.external is None:
            raise ManifestError(f"{self.key} is an ONNX device: no external service")
        return self.external


def load_manifest(path: Path) -> DeviceManifest:
    """Read and validate a manifest file; raises :class:`ManifestError` naming the problem."""
    return load_model(path, DeviceManifest, ManifestError)
