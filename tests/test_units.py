"""Units with real parts and no network: settings, sources, UIDs and keys, the folder store,
study assembly with an injected clock, and the migrations against the models."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pydantic
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner
from pydicom import Dataset
from sqlalchemy import select

from gateway.errors import ConfigError, StorageError, UnknownStudy
from gateway.index.database import Database
from gateway.index.object_store import FolderStore, check_key, instance_key
from gateway.index.tables import Base, StudyEventRow, StudyRow, utcnow
from gateway.ingest.assembly import Assembler, StudyCompleted
from gateway.ingest.receive import Ingest, Sender
from gateway.ingest.sources import SourceDirectory, load_directory, sync_directory
from gateway.settings import Settings, load_settings
from gateway.uids import is_valid_uid
from tests.services import ROOT, ct_instance, make_uid
from workers.cli import main as cli

SOURCES = ROOT / "gateway" / "configs" / "sources.yaml"
REGIONS = ROOT / "gateway" / "configs" / "regions.yaml"


# --- settings --------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No AIGW_* variables from outside, and a working directory without configs/."""
    for key in list(os.environ):
        if key.startswith("AIGW_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def _yaml(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_settings_precedence(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _yaml(tmp_path, "dicom_port: 2000\nae_title: FROMYAML\nquiet_period_s: 3\n")
    # YAML over defaults
    settings = load_settings(config)
    assert (settings.dicom_port, settings.ae_title, settings.quiet_period_s) == (
        2000,
        "FROMYAML",
        3,
    )
    assert settings.max_pdu_bytes == 131072  # not in the file: the default
    # environment over YAML
    clean_env.setenv("AIGW_DICOM_PORT", "3000")
    settings = load_settings(config)
    assert (settings.dicom_port, settings.ae_title) == (3000, "FROMYAML")
    # explicit (a command-line flag) over environment; an absent flag (None) masks nothing
    assert load_settings(config, dicom_port=4000).dicom_port == 4000
    assert load_settings(config, dicom_port=None).dicom_port == 3000
    # $AIGW_CONFIG_FILE chooses the file when none is given
    clean_env.setenv("AIGW_CONFIG_FILE", str(config))
    assert load_settings().ae_title == "FROMYAML"


def test_settings_defaults_without_a_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.config_file is None
    assert (settings.ae_title, settings.dicom_port, settings.open_mode) == ("AIGW", 11112, False)
    assert settings.object_store == "folder"
    assert settings.resolved_database_url == f"sqlite:///{(tmp_path / 'var' / 'aigw.db')}"
    assert settings.resolved_store_dir == Path("var/objects")
    clean_env.setenv("AIGW_DATA_DIR", str(tmp_path / "elsewhere"))
    assert load_settings().resolved_store_dir == tmp_path / "elsewhere" / "objects"


@pytest.mark.parametrize(
    ("yaml_text", "env", "explicit", "named"),
    [
        ("dicom_port: 70000\n", {}, {}, "dicom_port"),
        ("", {"AIGW_DICOM_PORT": "not-a-port"}, {}, "dicom_port"),
        ("", {}, {"dicom_port": 0}, "dicom_port"),
        ("dicom_prot: 104\n", {}, {}, "dicom_prot"),  # a typo is not silently ignored
        ("object_store: ftp\n", {}, {}, "object_store"),
        ("object_store: s3\n", {}, {}, "needs s3_access_key and s3_secret_key"),
        ("ae_title: 'A\\B'\n", {}, {}, "backslash"),
        ("", {}, {"ae_title": "X" * 17}, "ae_title"),
        ("quiet_period_s: 0\n", {}, {}, "quiet_period_s"),
        ("log_level: LOUD\n", {}, {}, "log_level"),
    ],
)
def test_bad_settings_are_refused_with_what_is_wrong(
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    yaml_text: str,
    env: dict[str, str],
    explicit: dict[str, Any],
    named: str,
) -> None:
    config = _yaml(tmp_path, yaml_text)
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(pydantic.ValidationError) as refused:
        load_settings(config, **explicit)
    assert named in str(refused.value)


def test_missing_settings_file_is_named(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml"):
        load_settings(tmp_path / "nowhere.yaml")


def test_cli_reports_bad_settings_without_a_traceback(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = _yaml(tmp_path, "dicom_port: 70000\n")
    result = CliRunner().invoke(cli, ["studies", "--config", str(config)])
    assert result.exit_code == 1
    assert "invalid settings" in result.output and "dicom_port" in result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("text", ["dicom_port: [unclosed\n", "- a list\n- not a mapping\n"])
def test_settings_file_that_is_not_a_yaml_mapping(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, text: str
) -> None:
    config = _yaml(tmp_path, text)
    with pytest.raises(ConfigError, match=r"gateway\.yaml"):
        load_settings(config)
    result = CliRunner().invoke(cli, ["studies", "--config", str(config)])
    assert result.exit_code == 1 and "invalid settings" in result.output


# --- sources and regions ---------------------------------------------------------------------


@pytest.fixture
def directory() -> SourceDirectory:
    return load_directory(SOURCES, REGIONS, open_mode=False)


def test_sources_admit_by_ae_title_and_address(directory: SourceDirectory) -> None:
    irk = directory.match("IRK_CAMI", "127.0.0.1")
    assert irk is not None and (irk.name, irk.region) == ("irk-cami", "38")
    assert irk.frmo_oid == "1.2.643.5.1.13.13.12.2.38.3805"
    assert directory.match("IRK_CAMI", "10.38.200.7") == irk
    assert directory.match("IRK_CAMI", "10.39.0.1") is None  # outside its networks
    assert directory.match("IRK_CAMI", "::1") is None
    assert directory.match("IRK_CAMI", "not-an-address") is None
    gkb = directory.match("IRK_GKB1_PACS", "192.0.2.55")  # no networks listed: any address
    assert gkb is not None and gkb.name == "irk-gkb1" and gkb.quiet_period_s == 20
    assert directory.match("TULA_CAMI", "127.0.0.1").region == "71"  # type: ignore[union-attr]
    assert directory.match("STRANGER", "127.0.0.1") is None
    assert directory.match("irk_cami", "127.0.0.1") is None  # AE titles are case-sensitive
    assert directory.by_name("open") is not None and directory.by_name("nobody") is None
    assert {s.name for s in directory.all_sources()} == {"irk-cami", "irk-gkb1", "tula-cami"}
    assert directory.regions["38"] == "Иркутская область"


def test_open_mode_lands_strangers_in_source_open() -> None:
    directory = load_directory(SOURCES, REGIONS, open_mode=True)
    stranger = directory.match("STRANGER", "203.0.113.9")
    assert stranger is not None and (stranger.name, stranger.region) == ("open", "00")
    assert directory.match("IRK_CAMI", "127.0.0.1").name == "irk-cami"  # type: ignore[union-attr]
    assert "open" in {s.name for s in directory.all_sources()}
    assert "00" in directory.regions
    # open mode needs no sources file at all
    bare = load_directory(Path("/nonexistent/sources.yaml"), REGIONS, open_mode=True)
    assert bare.match("ANY_AE", "127.0.0.1").name == "open"  # type: ignore[union-attr]


SOURCE = "  - {name: a, ae_title: A_AE, region: '38'}\n"


@pytest.mark.parametrize(
    ("sources_text", "message"),
    [
        ("sources: [unclosed\n", "not valid YAML"),
        (
            "sources:\n  - {name: a, ae_title: A_AE, region: '99'}\n",
            "missing from the regions file: ['99']",
        ),
        ("sources:\n" + SOURCE + SOURCE, "duplicate source names: a"),
        ("sources:\n  - {name: a, ae_title: A_AE, region: '7'}\n", "region"),
        ("sources:\n  - {name: a, ae_title: A_AE, region: '38', hosts: [10.0.0.0/33]}\n", "hosts"),
        ("sources:\n  - {name: a, ae_title: A_AE, region: '38', frmo_oid: abc}\n", "frmo_oid"),
        ("sources:\n  - {name: a, ae_title: 'A\\B', region: '38'}\n", "ae_title"),
        ("sources:\n  - {name: a, ae_title: A_AE, region: '38', colour: red}\n", "colour"),
        ("sources:\n  - {name: 'a/../b', ae_title: A_AE, region: '38'}\n", "name"),
        ("sources:\n  - {name: a, region: '38'}\n", "ae_title"),
    ],
)
def test_bad_sources_file_is_refused_naming_the_problem(
    tmp_path: Path, sources_text: str, message: str
) -> None:
    sources = _yaml(tmp_path, sources_text, "sources.yaml")
    with pytest.raises(ConfigError) as refused:
        load_directory(sources, REGIONS, open_mode=False)
    assert message in str(refused.value)
    if "regions file" not in message:
        assert "sources.yaml" in str(refused.value)  # says which file


def test_missing_sources_file_is_refused_when_closed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sources file not found"):
        load_directory(tmp_path / "absent.yaml", REGIONS, open_mode=False)


def test_bad_regions_file_is_refused(tmp_path: Path) -> None:
    regions = _yaml(tmp_path, "regions:\n  '3': Somewhere\n", "regions.yaml")
    with pytest.raises(ConfigError, match=r"regions\.yaml"):
        load_directory(SOURCES, regions, open_mode=False)


# --- UIDs and object keys --------------------------------------------------------------------

GOOD_UIDS = ["1", "1.2", "1.2.840.10008.5.1.4.1.1.2", "0.0", "1.02.3", "1." + "2" * 62]
BAD_UIDS = [
    "",
    ".",
    "..",
    "1.",
    ".1",
    "1..2",
    "1.2.3/../../x",
    "../../etc/passwd",
    "1.2.3a",
    "1.2 ",
    " 1.2",
    "1.2\x00",
    "1\\2",
    "1.2/3",
    "１.２",
    "1." + "2" * 63,
    "-1.2",
    "+1",
]


@pytest.mark.parametrize("uid", GOOD_UIDS)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)
    assert instance_key(uid, uid, uid) == f"studies/{uid}/{uid}/{uid}.dcm"
    assert check_key(instance_key(uid, uid, uid, version=3)).endswith(f"/{uid}.v3.dcm")


@pytest.mark.parametrize("uid", BAD_UIDS)
def test_invalid_uids_never_make_a_key(uid: str) -> None:
    assert not is_valid_uid(uid)
    good = "1.2.3"
    for args in ((uid, good, good), (good, uid, good), (good, good, uid)):
        with pytest.raises(ValueError, match="not a valid DICOM UID"):
            instance_key(*args)


def test_non_strings_are_not_uids() -> None:
    assert not any(is_valid_uid(value) for value in (None, 12, 1.2, b"1.2", ["1.2"]))


@pytest.mark.parametrize(
    "key",
    [
        "../x",
        "studies/../../etc/passwd",
        "studies/1/../2",
        "/etc/passwd",
        "studies//1",
        "studies/1/",
        "",
        ".",
        "studies/.hidden",
        "studies/1.dcm.partial",
        "studies\\..\\x",
        "studies/1 2",
        "studies/ü",
        "studies/1\x00",
    ],
)
def test_unsafe_keys_are_refused(key: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsafe object key"):
        check_key(key)
    store = FolderStore(tmp_path / "objects")
    with pytest.raises(ValueError, match="unsafe object key"):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.get(key)
    assert list(tmp_path.rglob("*")) == [tmp_path / "objects"]


# --- the folder store ------------------------------------------------------------------------


def test_folder_store_round_trip(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "objects")
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    assert not store.exists(key)
    store.put(key, b"first")
    assert store.exists(key) and store.get(key) == b"first"
    assert (tmp_path / "objects" / key).read_bytes() == b"first"
    store.put(key, b"second")  # replaced atomically
    assert store.get(key) == b"second"
    other = instance_key("1.2", "1.2.3", "1.2.3.5", version=2)
    store.put(other, b"")
    assert sorted(store.keys()) == sorted([key, other])
    assert sorted(store.keys("studies/1.2/1.2.3/")) == sorted([key, other])
    store.put(instance_key("1.2", "1.2.30", "1.2.30.1"), b"")
    assert len(list(store.keys("studies/1.2/1.2.3"))) == 2  # a folder, not a string prefix
    store.delete(instance_key("1.2", "1.2.30", "1.2.30.1"))
    assert list(store.keys("studies/9")) == []
    store.delete(key)
    store.delete(key)  # absent: not an error
    assert not store.exists(key) and list(store.keys()) == [other]
    with pytest.raises(StorageError, match="cannot read"):
        store.get(key)
    assert store.describe() == f"folder {(tmp_path / 'objects').resolve()}"


def test_folder_store_partial_writes(tmp_path: Path) -> None:
    store = FolderStore(tmp_path / "objects")
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    store.put(key, b"kept")
    folder = (tmp_path / "objects" / key).parent
    temps = [folder / ".1.2.3.9.dcm.abc.partial", tmp_path / "objects" / "x.partial"]
    for temp in temps:
        temp.write_bytes(b"half")
    assert list(store.keys()) == [key]  # temp files are not objects
    assert store.remove_partial_writes() == 2
    assert not any(temp.exists() for temp in temps)
    assert store.get(key) == b"kept"
    assert store.remove_partial_writes() == 0


def test_folder_store_failures(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    store = FolderStore(root)
    key = instance_key("1.2", "1.2.3", "1.2.3.4")
    store.put(key, b"x")
    (root / "studies" / "1.2" / "1.2.4").write_bytes(b"a file where a folder should be")
    with pytest.raises(StorageError, match="cannot write"):
        store.put(instance_key("1.2", "1.2.4", "1.2.4.1"), b"y")
    assert not list(root.rglob("*.partial"))
    store.check()
    assert store.has_room()
    assert not FolderStore(root, min_free_bytes=store.free_bytes() + 2**40).has_room()
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"")
    with pytest.raises(StorageError, match="cannot create"):
        FolderStore(blocker / "objects")


# --- study assembly with an injected clock ---------------------------------------------------


class World:
    """A migrated SQLite index, a folder store, ingest, and a clock the test moves."""

    def __init__(self, tmp_path: Path) -> None:
        self.db = Database(f"sqlite:///{tmp_path / 'index.db'}")
        self.db.migrate()
        self.directory = load_directory(SOURCES, REGIONS, open_mode=False)
        self.source_ids = sync_directory(self.db, self.directory)
        self.ingest = Ingest(self.db, FolderStore(tmp_path / "objects"))
        self.now = utcnow()
        self.completed: list[StudyCompleted] = []

    def clock(self) -> datetime:
        return self.now

    def assembler(self, hook: Callable[[StudyCompleted], None] | None = None) -> Assembler:
        return Assembler(
            self.db, self.directory, 10.0, hook or self.completed.append, clock=self.clock
        )

    def receive(self, source: str, study_uid: str, number: int = 1) -> datetime:
        ds = ct_instance(
            study_uid, make_uid(study_uid, "series"), make_uid(study_uid, "sop", number), number
        )
        found = self.directory.by_name(source)
        assert found is not None
        sender = Sender(
            source=found,
            source_id=self.source_ids[source],
            calling_ae=found.ae_title,
            address="127.0.0.1",
        )
        outcome = self.ingest.receive(_part10(ds), sender)
        assert outcome.status == 0, outcome
        return self.study(study_uid).last_received_at

    def study(self, study_uid: str) -> StudyRow:
        with self.db.session() as session:
            return session.scalars(select(StudyRow).where(StudyRow.study_uid == study_uid)).one()

    def states(self, study_uid: str) -> list[str | None]:
        with self.db.session() as session:
            return list(
                session.scalars(
                    select(StudyEventRow.state)
                    .join(StudyRow)
                    .where(StudyRow.study_uid == study_uid, StudyEventRow.kind == "state")
                    .order_by(StudyEventRow.id)
                )
            )


def _part10(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    one = World(tmp_path)
    yield one
    one.db.dispose()


def test_quiet_period_per_source(world: World) -> None:
    assembler = world.assembler()
    cami, gkb = make_uid("quiet", "cami"), make_uid("quiet", "gkb")
    last_cami = world.receive("irk-cami", cami)  # default quiet period: 10 s
    last_gkb = world.receive("irk-gkb1", gkb)  # its own: 20 s
    assert assembler.quiet_period("irk-cami") == timedelta(seconds=10)
    assert assembler.quiet_period("irk-gkb1") == timedelta(seconds=20)

    world.now = last_cami + timedelta(seconds=9.9)
    assert assembler.tick() == []
    assert world.study(cami).state == "receiving"

    world.now = last_cami + timedelta(seconds=10)
    assert last_gkb + timedelta(seconds=20) > world.now
    offered = assembler.tick()
    assert [c.study_uid for c in offered] == [cami]
    assert (offered[0].source, offered[0].region) == ("irk-cami", "38")
    assert offered[0].completed_at == world.now
    assert world.study(cami).state == "complete" and world.study(gkb).state == "receiving"
    assert world.study(cami).completed_at == world.now

    assert assembler.tick() == []  # offered once per completion
    world.now = last_gkb + timedelta(seconds=20)
    assert [c.study_uid for c in assembler.tick()] == [gkb]
    assert [c.study_uid for c in world.completed] == [cami, gkb]
    assert world.states(cami) == ["receiving", "complete"]


def test_a_new_instance_restarts_the_timer(world: World) -> None:
    assembler = world.assembler()
    study = make_uid("timer")
    first = world.receive("irk-cami", study, 1)
    world.now = first + timedelta(seconds=11)
    second = world.receive("irk-cami", study, 2)  # arrived at real time, after `first`
    world.now = second + timedelta(seconds=9)
    assert assembler.tick() == [] and world.study(study).state == "receiving"
    # found due, but an instance arrived in between: only_if_quiet keeps it open
    assert assembler.complete(study, reason="quiet_period", only_if_quiet=True) is False
    world.now = second + timedelta(seconds=10)
    assert [c.study_uid for c in assembler.tick()] == [study]


def test_manual_completion(world: World) -> None:
    assembler = world.assembler()
    study = make_uid("manual")
    world.receive("irk-cami", study)
    assert assembler.complete(study) is True  # at once, no quiet period
    assert assembler.complete(study) is False  # not open any more
    with world.db.session() as session:
        event = session.scalars(select(StudyEventRow).order_by(StudyEventRow.id.desc())).first()
        assert event is not None and event.state == "complete"
        assert event.detail == {"reason": "manual"}
    with pytest.raises(UnknownStudy):
        assembler.complete(make_uid("never sent"))
    assert [c.study_uid for c in assembler.tick()] == [study]
    assert assembler.tick() == []


def test_hook_is_offered_again_after_a_restart(world: World) -> None:
    study = make_uid("restart")
    world.receive("irk-cami", study)
    first = world.assembler()
    assert first.complete(study)
    assert len(first.tick()) == 1 and first.tick() == []
    # a new process (kill -9 and start): the hook hears of it again, once
    second = world.assembler()
    assert [c.study_uid for c in second.tick()] == [study]
    assert second.tick() == []
    assert [c.study_uid for c in world.completed] == [study, study]


def test_failing_hook_does_not_stop_assembly(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_completed: StudyCompleted) -> None:
        raise RuntimeError("routing is down")

    study, other = make_uid("hook-fails"), make_uid("hook-fails", 2)
    world.receive("irk-cami", study)
    world.receive("irk-cami", other)
    assembler = world.assembler(broken)
    assert assembler.complete(study) and assembler.complete(other)
    assert len(assembler.tick()) == 2  # both were tried
    assert sum(r.msg.startswith("completion hook failed") for r in caplog.records) == 2
    assert world.assembler().tick() != []  # after a restart they are offered again


def test_late_instance_supersedes_and_completes_again(world: World) -> None:
    assembler = world.assembler()
    study = make_uid("late")
    world.receive("irk-cami", study, 1)
    assert assembler.complete(study)
    first = assembler.tick()
    assert len(first) == 1
    last = world.receive("irk-cami", study, 2)
    assert world.study(study).state == "superseded"
    assert world.study(study).completed_at == first[0].completed_at  # kept until it completes
    world.now = last + timedelta(seconds=10)
    again = assembler.tick()
    assert [c.study_uid for c in again] == [study]
    assert again[0].completed_at == world.now != first[0].completed_at
    assert world.states(study) == ["receiving", "complete", "superseded", "complete"]


# --- migrations against the models -----------------------------------------------------------


def test_sqlite_migrations_match_the_models(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'schema.db'}")
    try:
        db.migrate()
        db.migrate()  # idempotent
        with db.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            connection.exec_driver_sql("DROP INDEX ix_study_events_study_at")
            diff = compare_metadata(context, Base.metadata)
        assert [op[0] for op in diff] == ["add_index"]  # the comparison can see a drift
    finally:
        db.dispose()


def test_settings_object_refuses_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match="dicom_prot"):
        Settings.model_validate({"dicom_prot": 1})
