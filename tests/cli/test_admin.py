"""`tunegate keys create|list|revoke` against a migrated embedded database."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli import app
from models.db import session_scope
from models.keys import authenticate, authenticate_admin


def test_keys_create_list_revoke(migrated_home: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--org", "acme"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tg-")
    with session_scope() as s:
        assert authenticate(s, key).name == "acme"
    listed = runner.invoke(app, ["keys", "list"])
    assert "acme" in listed.stdout and "active" in listed.stdout and key not in listed.stdout
    revoked = runner.invoke(app, ["keys", "revoke", key])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in runner.invoke(app, ["keys", "list", "--org", "acme"]).stdout
    missing = runner.invoke(app, ["keys", "revoke", "key-nope"])
    assert missing.exit_code != 0


def test_keys_create_admin(migrated_home: Path) -> None:
    runner = CliRunner()
    created = runner.invoke(app, ["keys", "create", "--admin", "Dana"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tga-")
    with session_scope() as s:
        assert authenticate_admin(s, key).name == "Dana"
    assert "admin: Dana" in runner.invoke(app, ["keys", "list"]).stdout
    both = runner.invoke(app, ["keys", "create", "--admin", "Dana", "--org", "acme"])
    neither = runner.invoke(app, ["keys", "create"])
    assert both.exit_code == 2 and neither.exit_code == 2


def test_orgs_set_and_show(migrated_home: Path) -> None:
    import json

    runner = CliRunner()
    ok = runner.invoke(
        app,
        [
            "orgs",
            "set",
            "--org",
            "acme",
            "--policy",
            "mitigation=drop",
            "--policy",
            "gate_delta=0.1",
            "--rate-limit",
            "30",
        ],
    )
    assert ok.exit_code == 0, ok.output
    shown = json.loads(runner.invoke(app, ["orgs", "show", "--org", "acme"]).stdout)
    assert shown["policy"]["mitigation"] == "drop" and shown["policy"]["gate_delta"] == 0.1
    assert shown["rate_limit_per_minute"] == 30
    bad = runner.invoke(app, ["orgs", "set", "--org", "acme", "--policy", "gate_delta=7"])
    assert bad.exit_code == 1
    shown = json.loads(runner.invoke(app, ["orgs", "show", "--org", "acme"]).stdout)
    assert shown["policy"]["gate_delta"] == 0.1  # the invalid update stored nothing
    assert shown["storage_quota_bytes"] == 10 * 1024**3  # the provider default
    ok = runner.invoke(app, ["orgs", "set", "--org", "acme", "--policy", "storage_quota_bytes=5000"])
    assert ok.exit_code == 0, ok.output
    shown = json.loads(runner.invoke(app, ["orgs", "show", "--org", "acme"]).stdout)
    assert shown["storage_quota_bytes"] == 5000 and "storage_quota_bytes" not in shown["policy"]
    bad = runner.invoke(app, ["orgs", "set", "--org", "acme", "--policy", "storage_quota_bytes=-1"])
    assert bad.exit_code == 1
    assert shown["max_active_jobs"] == 6  # the provider default (TUNEGATE_MAX_ACTIVE_JOBS_PER_ORG)
    ok = runner.invoke(app, ["orgs", "set", "--org", "acme", "--policy", "max_active_jobs=20"])
    assert ok.exit_code == 0, ok.output
    shown = json.loads(runner.invoke(app, ["orgs", "show", "--org", "acme"]).stdout)
    assert shown["max_active_jobs"] == 20 and "max_active_jobs" not in shown["policy"]
    bad = runner.invoke(app, ["orgs", "set", "--org", "acme", "--policy", "max_active_jobs=-2"])
    assert bad.exit_code == 1


def test_keys_list_as_json(migrated_home: Path) -> None:
    import json

    runner = CliRunner()
    key = runner.invoke(app, ["keys", "create", "--org", "acme"]).stdout.strip().splitlines()[-1]
    [row] = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    assert row["holder"] == "acme" and row["state"] == "active" and row["role"] == "org"
    assert key.startswith(row["prefix"]) and key not in json.dumps(row)  # the prefix only, never the key
