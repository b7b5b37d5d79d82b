"""``aigw health``: healthy or degraded, and why — each dependency, and what waits in each
working state since when. Reads the index and asks the dependencies itself (no running
gateway needed); exits 1 when degraded, so a script or a monitor can act on it."""

from __future__ import annotations

from pathlib import Path

import click

from gateway.api.backlog import HealthReport, HealthStatus, assess
from gateway.cli.options import CONFIG, DATA_DIR, settings_from
from gateway.errors import GatewayError
from gateway.index.database import Database
from gateway.index.object_store import create_store


@click.command("health")
@CONFIG
@DATA_DIR
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
@click.pass_context
def health_command(
    ctx: click.Context, config_file: Path | None, data_dir: Path | None, as_json: bool
) -> None:
    """Healthy, or degraded with the reasons (exit status 1)."""
    settings = settings_from(config_file, data_dir=data_dir)
    db = Database(settings.resolved_database_url, pool_size=1)
    try:
        report = assess(db, create_store(settings), settings)
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        db.dispose()
    click.echo(report.model_dump_json() if as_json else _text(report))
    ctx.exit(0 if report.status == HealthStatus.HEALTHY else 1)


def _text(report: HealthReport) -> str:
    lines = [report.status.value]
    lines += [f"  {reason}" for reason in report.reasons]
    lines.append("dependencies:")
    lines += [f"  {name:<13} {state}" for name, state in report.dependencies.items()]
    lines.append(f"{'waiting':<13} {'count':>6} {'oldest':>9} {'bound':>7}")
    for item in report.waiting:
        oldest = "—" if item.oldest_age_s is None else f"{item.oldest_age_s:.0f} s"
        mark = "  STUCK" if item.stuck else ""
        lines.append(
            f"  {item.state.value:<11} {item.count:>6} {oldest:>9} {item.bound_s:>5.0f} s{mark}"
        )
        if item.last_error:
            lines.append(f"    last error: {item.last_error}")
    return "\n".join(lines)
