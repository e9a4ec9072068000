"""`tunegate audit`: every organization's audit entries from the database, newest first, filtered by
organization and action, limited, as tab-separated lines or JSON; bad usage exits 2, an unknown
organization 1, each with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from models import audit
from models.db import session_scope
from models.keys import Admin, create_admin_key, get_or_create_org
from models.moderation import set_org_policy
from tunegate.settings import get_settings


@pytest.fixture
def entries(migrated_home: Path) -> dict[str, str]:
    """Three entries: acme's policy loosened, then tightened, by Dana; globex's tightened by Sam."""
    with session_scope() as s:
        dana = Admin(create_admin_key(s, "Dana").key_id, "Dana")
        sam = Admin(create_admin_key(s, "Sam").key_id, "Sam")
        acme, globex = get_or_create_org(s, "acme"), get_or_create_org(s, "globex")
        settings = get_settings()
        set_org_policy(
            s, dana, acme, {"gate_delta": 0.1}, "pilot with a looser gate, agreed by legal", settings
        )
        set_org_policy(s, dana, acme, {"mitigation": "drop"}, "drop the riskiest\tlines", settings)
        set_org_policy(s, sam, globex, {"gate_judges": "any"}, "repeat offender", settings)
        return {"acme": acme.id, "globex": globex.id}


def test_lists_every_organizations_entries_newest_first(entries: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["audit"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(len(line.split("\t")) == 7 for line in lines)
    newest, middle, oldest = (line.split("\t") for line in lines)
    assert newest[1:4] == ["globex", "set_org_policy", "Sam"] and newest[4] == "-"
    assert "gate_judges all → any (tighter)" in newest[5] and newest[6] == "repeat offender"
    assert middle[6] == "drop the riskiest lines"  # one line per entry: the tab in the reason is a space
    assert oldest[5] == "gate_delta 0.05 → 0.10 (looser)"


def test_filters_by_organization_action_and_limit(entries: dict[str, str]) -> None:
    runner = CliRunner()
    by_name = runner.invoke(app, ["audit", "--org", "acme"])
    by_id = runner.invoke(app, ["audit", "--org", entries["acme"]])
    assert by_name.exit_code == 0 and by_name.stdout == by_id.stdout
    assert len(by_name.stdout.splitlines()) == 2 and "globex" not in by_name.stdout
    assert len(runner.invoke(app, ["audit", "--limit", "1"]).stdout.splitlines()) == 1
    none = runner.invoke(app, ["audit", "--action", "override_release"])
    assert none.exit_code == 0 and none.stdout == "" and "no audit entries match" in none.stderr


def test_json(entries: dict[str, str]) -> None:
    result = CliRunner().invoke(app, ["audit", "--org", "acme", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["action"] for r in rows] == [audit.SET_POLICY] * 2
    assert rows[1]["details"] == {"changed": {"gate_delta": {"from": 0.05, "to": 0.1}}}
    assert rows[1]["org"] == "acme" and rows[1]["org_id"] == entries["acme"] and rows[1]["actor"] == "Dana"
    assert rows[1]["reason"] == "pilot with a looser gate, agreed by legal" and rows[0]["created_at"]
    empty = CliRunner().invoke(app, ["audit", "--action", "revoke_adapter", "--json"])
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []


def test_bad_usage_and_unknown_organization_exit_with_one_line(entries: dict[str, str]) -> None:
    runner = CliRunner()
    action = runner.invoke(app, ["audit", "--action", "delete_everything"])
    assert action.exit_code == 2 and "'delete_everything' is not an audit action" in action.output
    limit = runner.invoke(app, ["audit", "--limit", "0"])
    assert limit.exit_code == 2 and "--limit" in limit.output
    org = runner.invoke(app, ["audit", "--org", "nobody"])
    assert org.exit_code == 1 and org.stderr.strip() == "error: no organization named 'nobody'"
    assert org.stdout == ""


def test_an_unmigrated_database_says_how_to_fix_it(tunegate_home: Path) -> None:
    result = CliRunner().invoke(app, ["audit"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: the database has no tunegate tables yet: run `tunegate db upgrade` first"
    ]
