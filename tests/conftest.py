"""Shared fixtures: settings on temporary folders and free ports, and a gateway running
in-process on the embedded default (SQLite + folder store); a test whose tool or data is not
installed here is skipped with the harness's reason."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pydicom.config
import pytest

from gateway.settings import Settings
from tests.services import ROOT, ServiceUnavailable, free_port
from workers.serve import Gateway, Parts


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, None, None]:
    # The harness imports no pytest (the benchmarks use it too): it says what is missing,
    # in a fixture (setup) or in the test itself (call).
    try:
        yield
    except ServiceUnavailable as exc:
        pytest.skip(str(exc))


pytest_runtest_call = pytest_runtest_setup


@pytest.fixture(autouse=True)
def _strict_pydicom_writing() -> Iterator[None]:
    # What we write must be valid; what we read from the network stays lenient.
    original = pydicom.config.settings.writing_validation_mode
    pydicom.config.settings.writing_validation_mode = pydicom.config.RAISE
    yield
    pydicom.config.settings.writing_validation_mode = original


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "var",
            "dicom_host": "127.0.0.1",
            "dicom_port": free_port(),
            "http_port": 0,
            "sources_file": ROOT / "gateway" / "configs" / "sources.yaml",
            "regions_file": ROOT / "gateway" / "configs" / "regions.yaml",
            "min_free_bytes": 0,
            "quiet_period_s": 60.0,
            "assembly_poll_s": 0.1,
            "log_json": True,
            "scp_processes": 1,  # the default is the cores; tests that want more say so
        }
        values.update(overrides)
        return Settings.model_validate(values)

    return factory


@pytest.fixture
def start_gateway() -> Iterator[Callable[[Settings], Gateway]]:
    running: list[Gateway] = []

    def start(settings: Settings, **kwargs: Any) -> Gateway:
        gateway = Gateway(Parts.build(settings), **kwargs)
        gateway.start()
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


@pytest.fixture
def gateway(
    make_settings: Callable[..., Settings], start_gateway: Callable[[Settings], Gateway]
) -> Gateway:
    """A gateway on the embedded default with the project's sources.yaml."""
    return start_gateway(make_settings())
