"""Shadow and live per (device version, region): where a version starts, what a set mode
overrides, that a restart does not undo it, who changed it and when, and the migration that
keeps versions registered before modes existed delivering."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from sqlalchemy.orm import Session

from gateway.access.audit import Actor, AuditEvent, add, query
from gateway.devices.modes import DeviceMode, ModeChange, mode_of, modes_of, set_mode
from gateway.devices.registry import DeviceRegistry, RegistryError
from gateway.errors import ConfigError
from gateway.index.database import MIGRATIONS, Database
from gateway.index.object_store import FolderStore
from gateway.index.tables import DeviceModeRow
from gateway.ingest.sources import load_directory, sync_directory
from tests.onnx_models import classifier_with_heatmap, write_device
from tests.services import ROOT
from workers.cli import main

REGIONS = ROOT / "gateway" / "configs" / "regions.yaml"
SOURCES = ROOT / "gateway" / "configs" / "sources.yaml"


def _regions_yaml(path: Path, devices: str) -> Path:
    path.write_text(
        'regions:\n  "38": Иркутская область\n  "71": Тульская область\ndevices:\n' + devices,
        encoding="utf-8",
    )
    return path


@pytest.fixture
def registry(tmp_path: Path) -> DeviceRegistry:
    (tmp_path / "var").mkdir()
    db = Database(f"sqlite:///{tmp_path / 'var' / 'aigw.db'}")
    db.migrate()
    sync_directory(db, load_directory(SOURCES, REGIONS, open_mode=False))
    registry = DeviceRegistry(db, FolderStore(tmp_path / "var" / "objects"))
    model = classifier_with_heatmap()
    for device_id, version in (("dev-a", "1.0.0"), ("dev-a", "2.0.0"), ("dev-b", "1.0.0")):
        registry.register(write_device(tmp_path / f"{device_id}-{version}", model, id=device_id,
                                       version=version))  # fmt: skip
    return registry


def _apply(registry: DeviceRegistry, regions_file: Path) -> None:
    """What aigw serve does with regions.yaml at every start."""
    directory = load_directory(SOURCES, regions_file, open_mode=False)
    registry.set_regions(directory.devices, directory.start_modes)


def _modes(registry: DeviceRegistry, key: str) -> dict[str, tuple[str, str]]:
    return {m.region: (m.mode.value, m.source) for m in modes_of(registry.db, key)}


def _audited(who: Actor) -> Callable[[Session, ModeChange], None]:
    def audit(session: Session, change: ModeChange) -> None:
        add(session, who, AuditEvent.DEVICE_MODE_CHANGED, "test", region=change.region,
            detail=change.detail())  # fmt: skip

    return audit


def test_versions_start_in_shadow_unless_regions_yaml_says_live(
    registry: DeviceRegistry, tmp_path: Path
) -> None:
    _apply(
        registry,
        _regions_yaml(
            tmp_path / "regions.yaml",
            '  "38": [dev-b, {id: dev-a, mode: live}]\n  "71": [{id: dev-a, mode: shadow}]\n',
        ),
    )
    assert _modes(registry, "dev-a@1.0.0") == {
        "38": ("live", "regions.yaml"),
        "71": ("shadow", "default"),
    }
    assert _modes(registry, "dev-a") == _modes(registry, "dev-a@2.0.0")  # the newest
    assert _modes(registry, "dev-b@1.0.0") == {"38": ("shadow", "default")}
    with registry.db.session() as session:
        # A region where the device is not enabled at all: shadow, whatever comes later.
        assert mode_of(session, "dev-a", "1.0.0", "77") == DeviceMode.SHADOW


def test_a_mode_set_stands_across_restarts_and_is_audited_with_who_and_when(
    registry: DeviceRegistry, tmp_path: Path
) -> None:
    regions = _regions_yaml(tmp_path / "regions.yaml", '  "38": [{id: dev-a, mode: live}]\n')
    _apply(registry, regions)
    who = Actor("dr. admin", "admin", None)
    change = set_mode(registry.db, "dev-a@2.0.0", "38", DeviceMode.SHADOW, who.name, _audited(who))
    assert (change.before, change.after, change.changed) == ("live", "shadow", True)
    _apply(registry, regions)  # a restart applies regions.yaml again
    setting = next(m for m in modes_of(registry.db, "dev-a@2.0.0") if m.region == "38")
    assert (setting.mode, setting.source, setting.changed_by) == ("shadow", "set", "dr. admin")
    assert setting.changed_at is not None
    assert _modes(registry, "dev-a@1.0.0") == {"38": ("live", "regions.yaml")}  # untouched
    events = query(registry.db, events=[AuditEvent.DEVICE_MODE_CHANGED])
    assert [(e.token_name, e.region, e.detail) for e in events] == [
        ("dr. admin", "38", {"device": "dev-a@2.0.0", "from": "live", "to": "shadow"})
    ]
    with pytest.raises(RegistryError, match="no device dev-c"):
        set_mode(registry.db, "dev-c@1", "38", DeviceMode.LIVE, "x", _audited(who))
    with pytest.raises(RegistryError, match="no region 99"):
        set_mode(registry.db, "dev-a@1.0.0", "99", DeviceMode.LIVE, "x", _audited(who))


def test_a_mode_that_cannot_be_audited_is_not_set(registry: DeviceRegistry) -> None:
    def refuse(session: Session, change: ModeChange) -> None:
        raise RuntimeError("audit log full")

    with pytest.raises(RuntimeError):
        set_mode(registry.db, "dev-a@1.0.0", "38", DeviceMode.LIVE, "x", refuse)
    with registry.db.session() as session:
        assert session.scalars(sa.select(DeviceModeRow)).all() == []


def test_regions_yaml_with_a_bad_mode_or_a_device_twice_is_refused(tmp_path: Path) -> None:
    bad = _regions_yaml(tmp_path / "bad.yaml", '  "38": [{id: dev-a, mode: half}]\n')
    with pytest.raises(ConfigError, match="mode"):
        load_directory(SOURCES, bad, open_mode=False)
    twice = _regions_yaml(tmp_path / "twice.yaml", '  "38": [dev-a, {id: dev-a, mode: live}]\n')
    with pytest.raises(ConfigError, match=r"more than once: \['dev-a'\]"):
        load_directory(SOURCES, twice, open_mode=False)


def test_aigw_models_mode_shows_and_sets_per_region(
    registry: DeviceRegistry, tmp_path: Path
) -> None:
    _apply(registry, _regions_yaml(tmp_path / "regions.yaml", '  "38": [dev-a]\n  "71": [dev-a]\n'))
    var = ["--data-dir", str(tmp_path / "var")]
    env = {"AIGW_CONFIG_FILE": str(ROOT / "gateway" / "configs" / "gateway.yaml")}
    runner = CliRunner()
    shown = runner.invoke(main, ["models", "mode", "dev-a@1.0.0", *var], env=env)
    assert shown.exit_code == 0, shown.output
    assert "dev-a@1.0.0 region 38: shadow (default)" in shown.output
    changed = runner.invoke(
        main, ["models", "mode", "dev-a@1.0.0", "live", "--region", "71", *var], env=env
    )
    assert changed.exit_code == 0, changed.output
    assert "dev-a@1.0.0 region 71: live (set by " in changed.output
    assert _modes(registry, "dev-a@1.0.0") == {"38": ("shadow", "default"), "71": ("live", "set")}
    everywhere = runner.invoke(main, ["models", "mode", "dev-a@1.0.0", "live", *var], env=env)
    assert everywhere.exit_code == 0, everywhere.output
    assert {m for m, _ in _modes(registry, "dev-a@1.0.0").values()} == {"live"}
    events = query(registry.db, events=[AuditEvent.DEVICE_MODE_CHANGED])
    assert {e.role for e in events} == {"operator"} and len(events) == 3
    unknown = runner.invoke(main, ["models", "mode", "dev-x", "live", *var], env=env)
    assert unknown.exit_code != 0 and "no device dev-x" in unknown.output


def test_versions_registered_before_modes_existed_stay_live(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url)
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0007")
        connection.execute(sa.text("INSERT INTO regions (code, name) VALUES ('38', 'r')"))
        connection.execute(
            sa.text(
                'INSERT INTO devices (device_id, version, name, vendor, "group", manifest, '
                "onnx_key, sha256, enabled, registered_at) VALUES ('old', '1', 'n', 'v', "
                "'image_analysis', '{}', 'k', 's', 1, '2026-01-01 00:00:00')"
            )
        )
        connection.execute(
            sa.text("INSERT INTO device_regions (device_id, region_code) VALUES ('old', '38')")
        )
        command.upgrade(config, "head")
    engine.dispose()
    db = Database(url)
    with db.session() as session:
        assert mode_of(session, "old", "1", "38") == DeviceMode.LIVE
    db.dispose()
