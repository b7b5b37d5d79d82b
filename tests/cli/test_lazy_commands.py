"""Every ``aigw`` command that is imported on first use resolves to the command of its
name: a wrong entry in the lazy map would otherwise surface only when someone runs it."""

from __future__ import annotations

import click

from gateway.cli.app import COMMANDS, cli


def test_every_lazy_command_resolves_to_the_command_of_its_name() -> None:
    context = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(context, name)
        assert isinstance(command, click.Command), name
        assert command.name == name
    assert set(COMMANDS) <= set(cli.list_commands(context))
    assert cli.get_command(context, "no-such-command") is None
