"""The shared option parsers: ``--policy`` items and the knob list in a command's help, both read from
``models.policy.KNOBS`` when used (a knob added to the table is in the help and accepted, no edit here); the
``--scorers`` default and help, read from ``tunegate.scorers.SCORERS`` the same way."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from cli import app
from cli.options import checked_job_policy, parse_policy
from models.policy import KNOBS
from tests.models.knobs import throwaway_knob
from tests.worker.scoring.scorers import throwaway_scorer
from tunegate.scorers import SCORERS

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


def test_the_scorers_default_and_help_name_every_scorer_of_the_table() -> None:
    names = ",".join(SCORERS)
    assert names == "representation,gradient,selfinf"  # the shipped scorers, in the order the table has them
    assert f"--scorers <str> Comma-separated: {names}. [default: {names}]" in _help(["score"])
    assert f"--scorers <str> Comma-separated scorers to run. [default: {names}]" in _help(["finetune"])


def test_a_scorer_added_to_the_table_is_in_the_scorers_default_and_help() -> None:
    with throwaway_scorer() as spec:
        names = ",".join(SCORERS)
        assert names.endswith(f",{spec.name}")
        assert f"Comma-separated: {names}. [default: {names}]" in _help(["score"])
        # a default longer than the help's column is broken mid-word: compared without any whitespace
        assert f"[default:{names}]" in _help(["finetune"]).replace(" ", "")
    assert spec.name not in _help(["score"]) and spec.name not in _help(["finetune"])
