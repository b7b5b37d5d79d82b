"""The one settings object: ``configs/gateway.yaml`` overlaid by ``AIGW_*`` environment variables.

Built once by the entry point (``aigw serve``, a test, a worker) and passed down; nothing
reads configuration at import time.

The default configuration files (``gateway/configs/*.yaml``) and the reference devices
(``models/zoo``) ship inside the installed packages. A relative path is taken from the
working directory; a default name (``configs/…``, ``models/zoo``) that the working
directory lacks is taken from the packaged defaults (:func:`packaged_default`), so the
gateway runs from any directory after a plain ``pip install``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydicom.uid import PYDICOM_ROOT_UID

from gateway.errors import ConfigError
from gateway.packaged import packaged_default
from gateway.settings_groups import GpuSettings, StuckBounds
from models.yaml_file import read_mapping

DEFAULT_CONFIG_FILE = Path("configs/gateway.yaml")
# An OID (PS3.5 §9.1: no leading zeros, first arc 0-2); result UIDs append ≥ 24 digits of
# hash to it within DICOM's 64 characters, hence the limit on its length.
_OID = re.compile(r"[0-2](\.(0|[1-9][0-9]*))+")
UID_ROOT_MAX = 40
# The settings naming a configuration file or folder that may be a packaged default.
DEFAULT_PATH_SETTINGS = (
    "sources_file",
    "regions_file",
    "routing_file",
    "destinations_file",
    "semd_file",
    "devices_dir",
)


class Settings(BaseSettings):
    """Gateway settings. Every field is documented in the README's configuration reference."""

    model_config = SettingsConfigDict(
        env_prefix="AIGW_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    config_file: Path | None = Field(
        default=None,
        description="YAML file read for the other settings (env AIGW_CONFIG_FILE chooses it).",
    )
    data_dir: Path = Field(
        default=Path("./var"),
        description="Root for the embedded default: SQLite file and object-store folder.",
    )

    # --- DICOM SCP ---------------------------------------------------------------
    ae_title: str = Field(default="AIGW", min_length=1, max_length=16)
    dicom_host: str = Field(default="0.0.0.0", description="Address the DICOM SCP binds.")
    dicom_port: int = Field(default=11112, ge=1, le=65535)
    http_host: str = Field(default="127.0.0.1")
    http_port: int = Field(default=8080, ge=0, le=65535, description="0 disables HTTP.")
    open_mode: bool = Field(
        default=False,
        description="Accept any calling AE as source 'open', region '00' (demos and tests only).",
    )
    max_pdu_bytes: int = Field(
        default=131072,
        ge=4096,
        le=16 * 1024**2,
        description="Largest P-DATA PDU we announce and accept; a peer that declares a longer "
        "one is aborted before its body is read.",
    )
    max_associations: int = Field(
        default=32,
        ge=1,
        description="Concurrent associations per SCP process; a connection counts only once "
        "its A-ASSOCIATE-RQ has arrived.",
    )
    scp_processes: int = Field(
        default_factory=lambda: min(64, os.cpu_count() or 1),
        ge=1,
        le=64,
        description="SCP processes sharing the listening socket; >1 gets past the GIL. "
        "Default: the machine's cores.",
    )
    scp_balance_grace_ms: float = Field(
        default=200.0,
        ge=0,
        le=10_000,
        description="How long a more loaded SCP process leaves a new connection to a less "
        "loaded one before accepting it itself (scp_processes > 1).",
    )
    ingest_commit_window_ms: float = Field(
        default=5.0,
        ge=0,
        le=1000,
        description="Group commit: how long the instance that opens a group waits for "
        "instances other associations are still receiving, so that all share one index "
        "transaction and fsync; it never waits when none is on its way.",
    )
    network_timeout_s: float = Field(default=60.0, gt=0)
    dicom_request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="A connection that has not completed its TLS handshake and sent a whole "
        "A-ASSOCIATE-RQ within this many seconds is closed.",
    )
    max_connections_per_peer: int = Field(
        default=8,
        ge=1,
        description="Connections one peer address may hold open (pending and associated); "
        "more are closed at accept.",
    )
    max_instance_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024,
        description="Largest C-STORE dataset received; a larger one is drained without being "
        "kept and answered 0xA700.",
    )
    dicom_plain_enabled: bool = Field(
        default=True, description="Listen on dicom_port without TLS; false: TLS only."
    )
    dicom_tls_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="DICOM TLS port (PS3.15 Annex B; 2762 is registered); 0: no TLS listener.",
    )
    dicom_tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate (chain) of the DICOM TLS listener."
    )
    dicom_tls_key_file: Path | None = Field(
        default=None, description="PEM private key of dicom_tls_cert_file."
    )
    dicom_tls_client_ca_file: Path | None = Field(
        default=None,
        description="PEM CA certificates; when set, every TLS peer must present a client "
        "certificate signed by one of them.",
    )
    extra_storage_sop_classes: list[str] = Field(
        default_factory=list, description="More Storage SOP Class UIDs to accept."
    )

    # --- sources and regions ---------------------------------------------------------
    sources_file: Path = Field(default=Path("configs/sources.yaml"))
    regions_file: Path = Field(default=Path("configs/regions.yaml"))

    # --- storage ---------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default sqlite:///<data_dir>/aigw.db."
    )
    object_store: Literal["folder", "s3"] = "folder"
    store_dir: Path | None = Field(default=None, description="Default <data_dir>/objects.")
    s3_endpoint: str = Field(default="127.0.0.1:9000", description="host:port of the S3 server.")
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "aigw"
    s3_secure: bool = False
    s3_region: str | None = None
    s3_parallel_requests: int = Field(default=8, ge=1, le=64, description="S3 PUTs, GETs at once.")
    min_free_bytes: int = Field(
        default=2 * 1024**3,
        ge=0,
        description="Folder backend: below this much free space, refuse new data.",
    )

    # --- study assembly --------------------------------------------------------------
    quiet_period_s: float = Field(
        default=10.0, gt=0, description="Default quiet period; a source may override it."
    )
    assembly_poll_s: float = Field(default=0.5, gt=0)

    # --- routing, queue and inference --------------------------------------------------
    routing_file: Path = Field(default=Path("configs/routing.yaml"))
    devices_dir: Path | None = Field(
        default=Path("models/zoo"),
        description="Device folders (*/manifest.yaml) registered at start-up; None: none.",
    )
    broker_url: str = Field(
        # With a host named, kombu does not warn "No hostname was supplied" at every connect.
        default="memory://localhost/",
        description="Celery broker; memory:// runs an in-process worker.",
    )
    memory_broker_poll_s: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="memory:// broker: the longest an idle worker sleeps before it looks at "
        "its queues again although nothing woke it; a task sent (or put back) wakes it at "
        "once (gateway/jobs/memory_broker.py). Redis delivers at once.",
    )
    embedded_worker: bool = Field(
        default=True, description="aigw serve also runs a worker thread (the embedded default)."
    )
    worker_concurrency: int = Field(  # jobs in flight; two per core: the pool never waits
        default_factory=lambda: min(64, 2 * len(os.sched_getaffinity(0))), ge=1, le=64
    )
    report_concurrency: int = Field(
        default=2, ge=1, le=64, description="Results tasks at once, in their own pool."
    )
    device_queues: dict[str, str] = Field(
        default_factory=dict, description="Device id → Celery queue (GPU pool); default 'infer'."
    )
    inference_providers: list[str] = Field(
        default_factory=lambda: [
            "TensorrtExecutionProvider",
            "CUDAExecutionProvider",
            "CPUExecutionProvider",
        ],
        description="onnxruntime providers in order of preference; missing ones are skipped.",
    )
    gpu: GpuSettings = Field(default_factory=GpuSettings, description="GPU node: README.")
    inference_max_batch: int = Field(default=16, ge=1, le=1024)
    inference_max_wait_ms: float = Field(default=5.0, ge=0, le=1000)  # README: the batcher
    inference_queue_images: int = Field(default=64, ge=1, le=65536)  # inputs waiting per device
    inference_intra_op_threads: int = Field(  # README: CPU runs side by side, not spread
        default=0, ge=0, le=256
    )
    decode_processes: int = Field(  # the cores this process may use
        default_factory=lambda: len(os.sched_getaffinity(0)), ge=1, le=256
    )
    max_pixels_per_frame: int = Field(
        default=40_000_000,
        ge=1,
        description="Rows × Columns one frame may declare; a larger one fails its job before "
        "decoding (the largest real mammogram is ~23 Mpx).",
    )
    decode_memory_limit_mb: int = Field(
        default=8192,
        ge=0,
        description="Growth past its imports each child (decode_processes, and one per "
        "report_concurrency for results) may take (RLIMIT_AS); 0: both in the worker's threads.",
    )
    max_pixels_per_job: int = Field(
        default=640_000_000,
        ge=1,
        description="Pixels all frames of one job may declare together; more fails the job "
        "before decoding (a 2000-slice CT of 512² is 524 Mpx).",
    )
    job_max_retries: int = Field(default=5, ge=0, le=100)
    job_requeue_after_s: float = Field(
        default=900.0,
        gt=0,
        description="Safety net for a task message lost unnoticed: a job still queued this "
        "long after its task was sent, running this long plus broker_visibility_timeout_s, "
        "or inferred without results this long is sent again.",
    )
    job_lease_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A worker running a job renews its heartbeat every third of this; a copy "
        "of the same delivery while the heartbeat is fresh is skipped (Redis delivers an "
        "unacknowledged task again after broker_visibility_timeout_s even while it runs). "
        "Capped at half the visibility timeout. aigw serve sends a running job again once "
        "its heartbeat is older than the visibility timeout plus three leases.",
    )
    redrive_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often aigw serve looks at the broker and sends the tasks that are due.",
    )
    retry_backoff_s: float = Field(
        default=1.0,
        gt=0,
        description="First wait before work that met an unavailable database, broker or "
        "object store is tried again; doubles per attempt.",
    )
    retry_max_backoff_s: float = Field(
        default=10.0,
        gt=0,
        description="Longest such wait: after a dependency returns, pending work moves on "
        "within this plus redrive_poll_s.",
    )
    broker_visibility_timeout_s: int = Field(
        default=600,
        ge=1,
        description="Redis: a task unacknowledged this long (its worker died) is delivered again.",
    )

    # --- results and delivery --------------------------------------------------------
    destinations_file: Path = Field(
        default=Path("configs/destinations.yaml"),
        description="Where each source's results go (C-STORE, Orthanc REST, STOW-RS, HTTP).",
    )
    semd_file: Path = Field(
        default=Path("configs/semd.yaml"),
        description="SEMD header facts per organisation: MIS OID, responsible doctor, address.",
    )
    uid_root: str | None = Field(
        default=None,
        description="The organisation's OID under which result UIDs are minted (SR, SC, GSPS, "
        "SEG, device UIDs); unset: UUID-derived 2.25.… UIDs.",
    )
    semd_reference_dir: Path | None = Field(
        default=None,
        description="Official SEMD XSD + schematron folder; when set, each SEMD is validated "
        "before it is sent and an invalid one is withheld with the reasons.",
    )
    semd_key_image_max_px: int = Field(
        default=1024,
        ge=256,
        le=4096,
        description="Longest side, in pixels, of the flag image embedded in the SEMD as JPEG; "
        "larger flag images are scaled down (a viewer's size, not the source's).",
    )
    outbox_poll_s: float = Field(default=1.0, gt=0, description="How often due deliveries run.")
    outbox_backoff_s: float = Field(
        default=2.0, gt=0, description="First retry delay; doubles per attempt."
    )
    outbox_max_backoff_s: float = Field(default=300.0, gt=0)
    delivery_timeout_s: float = Field(default=30.0, gt=0, description="Per delivery attempt.")

    # --- monitoring: drift, usage reports, malfunction notices -------------------------
    monitoring_check_every_s: float = Field(
        default=60.0,
        gt=0,
        le=86400,
        description="How often aigw serve queues the last month's usage reports and checks "
        "for malfunctions (only when a destination of kind monitoring is configured).",
    )
    malfunction_failure_rate: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="A device version whose failed ÷ finished jobs over the last day is above "
        "this gets a malfunction notice (once per UTC day).",
    )
    malfunction_min_jobs: int = Field(
        default=5,
        ge=1,
        description="Finished jobs in the last day a device version needs before its failure "
        "rate is judged.",
    )
    drift_baseline_weeks: int = Field(
        default=4,
        ge=1,
        le=52,
        description="Drift: the first weeks of a device version in a region, whose positive "
        "rate is the baseline.",
    )
    drift_sigmas: float = Field(
        default=3.0,
        gt=0,
        le=10,
        description="Drift: a week is outside the band when its positive rate is more than "
        "this many binomial standard deviations from the baseline's.",
    )
    drift_min_week_studies: int = Field(
        default=20,
        ge=1,
        description="Drift: studies a week (and the baseline) needs before it is judged.",
    )

    # --- health --------------------------------------------------------------------
    stuck_after_s: StuckBounds = Field(
        default_factory=StuckBounds,
        description="Per working state, how old its oldest item may be before health says "
        "degraded.",
    )

    # --- control plane (REST API, dashboard) -------------------------------------------
    api_max_upload_bytes: int = Field(
        default=256 * 1024**2,
        ge=1024,
        description="Largest upload the API accepts (device registration, rules tester); "
        "larger requests get 413.",
    )
    stow_max_bytes: int = Field(
        default=4 * 1024**3,
        ge=1024,
        description="Largest DICOMweb STOW-RS request body (all its instances together); "
        "larger requests get 413. Each instance is also bounded by max_instance_bytes.",
    )
    qido_max_results: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Most matches one DICOMweb QIDO-RS answer holds (its limit= is capped there).",
    )
    session_max_age_s: int = Field(
        default=8 * 3600, ge=60, description="Dashboard session lifetime from login."
    )
    session_idle_s: int = Field(
        default=15 * 60,
        ge=60,
        description="A dashboard session unused this long ends (the user logs in again).",
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        le=1000,
        description="Failed dashboard logins, per account and per peer address, that lock "
        "it for login_lockout_s.",
    )
    login_lockout_s: int = Field(
        default=15 * 60,
        ge=1,
        le=7 * 24 * 3600,
        description="How long an account or peer address stays locked; kept in the index, so "
        "a restart does not lift it.",
    )
    audit_retention_days: int = Field(
        default=3 * 365,
        ge=0,
        le=100 * 365,
        description="Audit events older than this are deleted (at start and hourly by aigw "
        "serve); 0 keeps them forever.",
    )
    http_tls_cert_file: Path | None = Field(
        default=None,
        description="PEM certificate (chain): the API and dashboard are served over HTTPS "
        "and session cookies are Secure.",
    )
    http_tls_key_file: Path | None = Field(
        default=None, description="PEM private key of http_tls_cert_file."
    )

    # --- logging ---------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = Field(default=True, description="One JSON object per log line.")

    @field_validator("ae_title")
    @classmethod
    def _ae_title_is_printable(cls, value: str) -> str:
        if value != value.strip() or not value.isascii() or "\\" in value:
            raise ValueError("AE title must be ASCII without backslashes or edge spaces")
        return value

    @field_validator("uid_root")
    @classmethod
    def _uid_root_is_an_oid_we_may_use(cls, value: str | None) -> str | None:
        """An OID the organisation owns, returned with its trailing dot; empty: unset."""
        if value is None or not value.strip():
            return None
        root = value.strip().removesuffix(".")
        if not _OID.fullmatch(root):
            raise ValueError(
                f"uid_root {value!r} is not an OID (digits and dots, no leading zeros, "
                "e.g. 1.2.643.5.1.13.13.12.2.38.3811)"
            )
        if len(root) + 1 > UID_ROOT_MAX:
            raise ValueError(
                f"uid_root {value!r} is {len(root) + 1} characters with its dot; at most "
                f"{UID_ROOT_MAX} leave result UIDs enough digits to stay unique"
            )
        if root == "2.25" or root.startswith("2.25."):
            raise ValueError("uid_root: 2.25 is the UUID arc; leave uid_root unset to use it")
        if f"{root}.".startswith(PYDICOM_ROOT_UID):
            raise ValueError("uid_root: pydicom's root is pydicom's; use the organisation's OID")
        return root + "."

    @field_validator(*DEFAULT_PATH_SETTINGS)
    @classmethod
    def _default_names_fall_back_to_the_package(cls, value: Path | None) -> Path | None:
        return None if value is None else packaged_default(value)

    @model_validator(mode="after")
    def _s3_needs_credentials(self) -> Settings:
        if self.object_store == "s3" and not (self.s3_access_key and self.s3_secret_key):
            raise ValueError("object_store 's3' needs s3_access_key and s3_secret_key")
        return self

    @model_validator(mode="after")
    def _tls_is_complete(self) -> Settings:
        if self.dicom_tls_port and not (self.dicom_tls_cert_file and self.dicom_tls_key_file):
            raise ValueError("dicom_tls_port needs dicom_tls_cert_file and dicom_tls_key_file")
        if not self.dicom_tls_port and self.dicom_tls_client_ca_file is not None:
            raise ValueError("dicom_tls_client_ca_file is set but dicom_tls_port is 0")
        if not self.dicom_plain_enabled and not self.dicom_tls_port:
            raise ValueError("dicom_plain_enabled is false and dicom_tls_port is 0: no listener")
        if self.dicom_plain_enabled and self.dicom_tls_port == self.dicom_port:
            raise ValueError("dicom_tls_port must differ from dicom_port")
        if (self.http_tls_cert_file is None) != (self.http_tls_key_file is None):
            raise ValueError("http_tls_cert_file and http_tls_key_file go together")
        return self

    @property
    def http_tls(self) -> bool:
        """True when the API and dashboard are served over HTTPS."""
        return self.http_tls_cert_file is not None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'aigw.db').resolve()}"

    @property
    def resolved_store_dir(self) -> Path:
        return self.store_dir or self.data_dir / "objects"

    @property
    def trt_engine_cache_dir(self) -> Path:
        return self.gpu.trt_engine_cache_dir or self.data_dir / "trt-engines"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments (CLI flags) > environment > YAML file > defaults.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``config_file``, else ``$AIGW_CONFIG_FILE``, else
    ``configs/gateway.yaml`` when it exists, with ``AIGW_*`` variables on top.

    ``overrides`` are explicit values, e.g. from command-line flags; ``None`` values are
    ignored so an absent flag does not mask the file or the environment.
    """
    chosen = config_file or _default_config_file()
    explicit = {key: value for key, value in overrides.items() if value is not None}
    if chosen is None:
        return Settings(**explicit)
    if not chosen.is_file():
        raise FileNotFoundError(f"configuration file not found: {chosen}")
    read_mapping(chosen, ConfigError, empty_ok=True)  # a clear error before pydantic's
    from_file = type(
        "Settings", (Settings,), {"model_config": {**Settings.model_config, "yaml_file": chosen}}
    )
    settings: Settings = from_file(config_file=chosen, **explicit)
    return settings


def _default_config_file() -> Path | None:
    env_file = os.environ.get("AIGW_CONFIG_FILE")
    if env_file:
        return Path(env_file)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None
