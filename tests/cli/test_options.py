"""The shared option parsers: ``--policy`` items and the knob list in a command's help, both read from
``models.policy.KNOBS`` when used (a knob added to the table is in the help and accepted, no edit here)."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from cli import app
from cli.options import checked_job_policy, parse_policy
from models.policy import KNOBS
from tests.models.knobs import throwaway_knob

POLICY_COMMANDS = (["jobs", "create"], ["finetune"], ["orgs", "set"])


def _help(command: list[str]) -> str:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # the help's wrapping aside


@pytest.mark.parametrize("command", POLICY_COMMANDS, ids=" ".join)
def test_the_policy_help_lists_every_knob_of_the_table(command: list[str]) -> None:
    shown = _help(command)
    assert "Policy knobs (--policy KNOB=VALUE):" in shown
    for name, spec in KNOBS.items():
        assert f"{name} " in shown and spec.stricter in shown, name
    assert "stricter: all < primary < any" in shown and "{category: [0, 1]}" in shown


def test_a_knob_added_to_the_table_is_in_the_help_and_accepted() -> None:
    with throwaway_knob() as knob:
        for command in POLICY_COMMANDS:
            assert f"{knob.name} [0, 1], stricter: smaller; {knob.help}" in _help(command), command
        assert checked_job_policy([f"{knob.name}=0.2"]) == {knob.name: 0.2}
        with pytest.raises(typer.BadParameter, match=f"policy.{knob.name} must be within"):
            checked_job_policy([f"{knob.name}=7"])
    assert knob.name not in _help(["jobs", "create"])
    with pytest.raises(typer.BadParameter, match="unknown policy key"):
        parse_policy([f"{knob.name}=0.2"], KNOBS)
