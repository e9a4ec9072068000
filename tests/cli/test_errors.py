"""cli/errors.py: the root group's handling of typer's usage errors (typer vendors click, so only typer's
public exceptions are caught): the help for a group called without a command, one line with where to read
the right usage for a command's own usage error. (Every command's wrong usage: tests/cli/test_usage.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

CLIENT_VARS = ("TUNEGATE_API_KEY", "OPENAI_API_KEY", "TUNEGATE_BASE_URL", "OPENAI_BASE_URL")


@pytest.mark.parametrize(("args", "usage"), [([], "Usage: root [OPTIONS]"), (["jobs"], "Usage: root jobs")])
def test_a_group_without_a_command_shows_its_help(tunegate_home: Path, args: list[str], usage: str) -> None:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr.startswith(usage) and "Commands:" in res.stderr, res.stderr
    assert "error:" not in res.stderr


def test_a_commands_own_usage_error_is_one_line_naming_its_help(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in CLIENT_VARS:
        monkeypatch.delenv(var, raising=False)
    res = CliRunner().invoke(app, ["files", "list"])
    assert res.exit_code == 2 and res.stdout == ""
    assert res.stderr == (
        "error: no API key: set TUNEGATE_API_KEY (or OPENAI_API_KEY) (see 'root files list --help')\n"
    )
