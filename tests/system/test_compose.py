"""docker-compose.gpu.yml and the Dockerfiles, checked without a Docker engine: the services
an operator needs, how they are built, GPU reservations, health checks, start-up order, and
that every AIGW_* variable they set is a real setting (a misspelt one would be ignored by
nobody: extra settings are forbidden, so the container would refuse to start)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from gateway.settings import Settings
from tests.services import ROOT

COMPOSE = ROOT / "docker-compose.gpu.yml"
DOCKERFILES = (ROOT / "docker" / "Dockerfile", ROOT / "docker" / "Dockerfile.gpu")
SERVICES = {"gateway", "worker-gpu", "worker-cpu", "redis", "postgres", "minio", "flower"}
AIGW_VARIABLE = re.compile(r"\bAIGW_[A-Z0-9_]+\b")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(key): str(value) for key, value in env.items()}


def test_every_service_is_there_and_has_an_image(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= SERVICES | {"orthanc"}
    for name, service in services.items():
        assert service.get("image") or service.get("build"), name
    assert services["gateway"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert services["worker-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert services["worker-cpu"]["image"] == services["gateway"]["image"]  # same build
    for service in services.values():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_the_gpu_worker_reserves_one_nvidia_gpu_per_replica(
    services: dict[str, dict[str, Any]],
) -> None:
    worker = services["worker-gpu"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device["count"] == 1  # scaled per GPU: --scale worker-gpu=N
    assert "replicas" in worker["deploy"]
    assert worker["command"][:3] == ["worker", "--queues", "infer"]
    providers = _environment(worker)["AIGW_INFERENCE_PROVIDERS"]
    assert "CUDAExecutionProvider" in providers
    Settings(inference_providers=yaml.safe_load(providers))  # valid as the setting parses it
    for other in ("gateway", "worker-cpu"):
        assert "deploy" not in services[other]


def test_queues_split_inference_from_reports(
    services: dict[str, dict[str, Any]],
) -> None:
    command = services["worker-cpu"]["command"]
    queues = set(command[command.index("--queues") + 1].split(","))
    from gateway.jobs.task_queue import DEFAULT_INFER_QUEUE, REPORTS_QUEUE

    assert REPORTS_QUEUE in queues
    assert DEFAULT_INFER_QUEUE not in queues
    assert _environment(services["gateway"])["AIGW_EMBEDDED_WORKER"] == "false"


def test_health_checks_and_start_up_order(services: dict[str, dict[str, Any]]) -> None:
    for name in SERVICES | {"orthanc"}:
        check = services[name]["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
    gateway_needs = services["gateway"]["depends_on"]
    assert gateway_needs["postgres"]["condition"] == "service_healthy"
    assert gateway_needs["redis"]["condition"] == "service_healthy"
    # The bucket exists before the gateway stores anything.
    assert gateway_needs["minio-init"]["condition"] == "service_completed_successfully"
    assert "mc mb" in " ".join(services["minio-init"]["command"])
    for worker in ("worker-gpu", "worker-cpu"):
        assert services[worker]["depends_on"]["gateway"]["condition"] == "service_healthy"
    assert services["orthanc"]["profiles"] == ["demo"]


def test_state_lives_in_named_volumes(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    declared = set(compose["volumes"])
    for name in ("gateway", "redis", "postgres", "minio"):
        mounts = services[name]["volumes"]
        assert mounts, name
        for mount in mounts:
            assert mount.split(":", 1)[0] in declared, (name, mount)


def test_every_aigw_variable_is_a_setting(services: dict[str, dict[str, Any]]) -> None:
    known = {f"AIGW_{name.upper()}" for name in Settings.model_fields}
    used: dict[str, set[str]] = {}
    for path in (COMPOSE, *DOCKERFILES, ROOT / "docker" / "entrypoint.sh"):
        for variable in AIGW_VARIABLE.findall(path.read_text()):
            used.setdefault(variable, set()).add(path.name)
    assert {"AIGW_DATABASE_URL", "AIGW_BROKER_URL", "AIGW_OBJECT_STORE"} <= set(used)
    unknown = {name: sorted(files) for name, files in used.items() if name not in known}
    assert not unknown, f"not settings: {unknown}"
    # And the shared block parses as settings (types, the S3 credentials rule).
    env = _environment(services["gateway"])
    values = {
        key.removeprefix("AIGW_").lower(): re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)
        for key, value in env.items()
        if key.startswith("AIGW_") and key != "AIGW_DEVICES_DIR"
    }
    settings = Settings.model_validate(values)
    assert settings.object_store == "s3" and settings.broker_url.startswith("redis://")


def test_the_dockerfiles_install_what_each_image_needs() -> None:
    cpu, gpu = (path.read_text() for path in DOCKERFILES)
    assert re.search(r"^FROM python:3\.11", cpu, re.MULTILINE)
    assert re.search(r"^FROM nvidia/cuda:12[^\s]*cudnn", gpu, re.MULTILINE)
    assert "onnxruntime-gpu" in gpu and "pip uninstall -y onnxruntime" in gpu
    for text in (cpu, gpu):
        assert "ENTRYPOINT" in text and "USER aigw" in text
        for copied in re.findall(r"^COPY (\S+)", text, re.MULTILINE):
            assert (ROOT / copied).exists(), copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_the_healthcheck_script_compiles() -> None:
    source = (ROOT / "docker" / "worker_healthcheck.py").read_text()
    compile(source, "worker_healthcheck.py", "exec")
    assert "control.ping" in source
