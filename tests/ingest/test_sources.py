"""Who may send: sources.yaml and regions.yaml, by calling AE title and address."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.ingest.sources import SourceDirectory, load_directory
from tests.services import ROOT

SOURCES = ROOT / "gateway" / "configs" / "sources.yaml"
REGIONS = ROOT / "gateway" / "configs" / "regions.yaml"


# --- sources and regions ---------------------------------------------------------------------


def _yaml(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


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
        (
            "sources:\n  - {name: a, ae_title: A_AE, region: '38', complete_on_release: maybe}\n",
            "complete_on_release",
        ),
        (
            "sources:\n  - {name: a, ae_title: A_AE, region: '38', "
            "query: {host: pacs, port: 70000, ae_title: PACS}}\n",
            "query.port",
        ),
        (
            "sources:\n  - {name: a, ae_title: A_AE, region: '38', "
            "query: {host: pacs, port: 104, ae_title: THIRTEEN_CHARS_PLUS}}\n",
            "query.ae_title",
        ),
        (
            "sources:\n  - {name: a, ae_title: A_AE, region: '38', "
            "query: {host: pacs, port: 104}}\n",
            "query.ae_title",
        ),
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
