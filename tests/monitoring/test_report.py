"""The usage report's schema as published, and the report's month arithmetic."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from gateway.monitoring.report import Period, UsageReport
from tests.services import ROOT
from workers.cli import main

SCHEMA = ROOT / "docs" / "usage-report.schema.json"


def test_the_published_schema_is_the_one_the_gateway_writes() -> None:
    """docs/usage-report.schema.json is what receivers validate against."""
    published = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert published == UsageReport.model_json_schema(mode="serialization")
    printed = CliRunner().invoke(main, ["monitoring", "schema"])
    assert printed.exit_code == 0 and json.loads(printed.output) == published


def test_a_month_is_its_utc_span_and_the_last_whole_month_is_the_one_before() -> None:
    december = Period.of("2026-12")
    assert (december.start, december.end) == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2027, 1, 1, tzinfo=UTC),
    )
    assert Period.before(datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)).month == "2026-12"
    assert Period.before(datetime(2026, 3, 31, 23, 59, tzinfo=UTC)).month == "2026-02"
    for bad in ("2026-13", "2026-1", "1999-12", "2026-00"):
        with pytest.raises(ValueError, match="YYYY-MM"):
            Period.of(bad)
