"""The ``aigw`` command group with every command that needs no running gateway; the
composition root (:mod:`workers.cli`) adds ``serve``, ``worker`` and ``demo`` to it."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import click

# Each command's module is imported when the command runs, not when ``aigw`` starts: the
# modules behind them reach onnx, highdicom, the API and Celery, seconds of imports that a
# ``aigw studies`` or ``aigw echo`` does not need.
COMMANDS = {
    "init": "gateway.cli.init:init_command",
    "echo": "gateway.cli.dicom:echo",
    "send": "gateway.cli.dicom:send",
    "studies": "gateway.cli.studies:studies",
    "jobs": "gateway.cli.studies:jobs",
    "models": "gateway.cli.models:models",
    "rules": "gateway.cli.rules:rules_group",
    "tokens": "gateway.cli.access:tokens_group",
    "api": "gateway.cli.access:api_command",
    "audit": "gateway.cli.audit:audit_command",
    "results": "gateway.cli.results:results_command",
    "outbox": "gateway.cli.results:outbox_group",
    "monitoring": "gateway.cli.monitoring:monitoring_group",
    "health": "gateway.cli.health:health_command",
}


class LazyGroup(click.Group):
    """A group whose commands named in ``lazy`` (name → "module:attribute") are imported on
    first use; ``--help`` imports them all to show their summaries."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module_name, attribute = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command) or command.name != cmd_name:
                raise RuntimeError(f"{self.lazy[cmd_name]} is not the command {cmd_name!r}")
            self.add_command(command)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS)
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
