"""The ``aigw`` command group with every command that needs no running gateway; the
composition root (:mod:`workers.cli`) adds ``serve``, ``worker`` and ``demo`` to it."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gateway.cli.access import api_command, tokens_group
from gateway.cli.audit import audit_command
from gateway.cli.dicom import echo, send
from gateway.cli.health import health_command
from gateway.cli.init import init_command
from gateway.cli.models import models
from gateway.cli.monitoring import monitoring_group
from gateway.cli.results import outbox_group, results_command
from gateway.cli.rules import rules_group
from gateway.cli.studies import jobs, studies


@click.group()
def cli() -> None:
    """AI imaging gateway: DICOM in, registered AI devices, results out."""


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    add_help_option=False,
)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """The benchmark suite (python -m benchmarks.suite; --help for its options)."""
    import subprocess

    # benchmarks/ sits beside the packages in the repository and is not installed: the
    # suite imports everything, and nothing in the gateway imports it.
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "suite.py").is_file():
        raise click.ClickException("the benchmark suite ships with the repository checkout")
    command = [sys.executable, "-m", "benchmarks.suite", *ctx.args]
    sys.exit(subprocess.call(command, cwd=root))


for _command in (
    init_command,
    echo,
    send,
    studies,
    jobs,
    models,
    rules_group,
    tokens_group,
    api_command,
    audit_command,
    results_command,
    outbox_group,
    monitoring_group,
    health_command,
):
    cli.add_command(_command)
