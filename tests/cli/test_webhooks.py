"""``tunegate webhooks create|list|show|delete|test|rotate-secret|event-types`` against a live API server,
through the openai SDK's ``client.webhooks`` (issue 28): exit codes, one row a line, the secret shown once."""

from __future__ import annotations

import json

import openai
import pytest
from typer.testing import CliRunner, Result

from cli import app
from tests.api.conftest import server  # noqa: F401 (the live API server fixture)
from tests.api.server import Server
from tests.api.test_webhook_endpoints import VerifyingReceiver
from tests.cli.test_remote import api, ok, rows  # noqa: F401 (the client variables for a new organization)
from tunegate.settings import reset_settings

pytestmark = pytest.mark.parametrize("server", ["sqlite"], indirect=True)
URL = "https://hooks.example.com/tunegate"


def run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_create_list_show_delete(api: Server) -> None:  # noqa: F811
    created = ok("webhooks", "create", URL, "--event-type", "fine_tuning.job.failed")
    [row, [secret]] = rows(created)
    endpoint_id, name, url, types = row[:4]
    assert endpoint_id.startswith("wh_") and (name, url, types) == (
        "hooks.example.com",
        URL,
        "fine_tuning.job.failed",
    )
    assert secret.startswith("whsec_")
    assert "shown only once" in created.stderr
    listed = ok("webhooks", "list")
    assert rows(listed) == [row] and secret not in listed.stdout
    shown = json.loads(ok("webhooks", "show", endpoint_id).stdout)
    assert shown["id"] == endpoint_id and shown["signing_secret_hint"].endswith(secret[-4:])
    assert secret not in json.dumps(shown)
    [as_json] = json.loads(ok("webhooks", "list", "--json").stdout)
    assert as_json["id"] == endpoint_id and as_json["object"] == "webhook_endpoint"
    second = rows(ok("webhooks", "create", URL, "--name", "ci"))[0]
    assert (
        second[1] == "ci"
        and second[3] == "fine_tuning.job.succeeded,fine_tuning.job.failed,fine_tuning.job.cancelled"
    )
    assert [r[0] for r in rows(ok("webhooks", "list"))] == [second[0], endpoint_id]
    assert ok("webhooks", "delete", endpoint_id).stdout.strip() == f"deleted {endpoint_id}"
    assert [r[0] for r in rows(ok("webhooks", "list"))] == [second[0]]


def test_event_types_and_json_create(api: Server) -> None:  # noqa: F811
    types = ok("webhooks", "event-types").stdout.splitlines()
    assert types[:3] == ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"]
    [made] = json.loads(ok("webhooks", "create", URL, "--json").stdout)
    assert made["signing_secret"].startswith("whsec_") and made["url"] == URL


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["create", "ftp://hooks.example.com/x"], "'url' must be an absolute http:// or https:// URL"),
        (["create", "http://127.0.0.1/hook"], "webhook_url_not_allowed"),
        (["create", URL, "--event-type", "job.boom"], "unknown event types ['job.boom']"),
        (["delete", "wh_missing"], "No such webhook endpoint: wh_missing"),
        (["test", "wh_missing"], "No such webhook endpoint: wh_missing"),
    ],
)
def test_a_refusal_is_one_line_and_exit_1(api: Server, args: list[str], message: str) -> None:  # noqa: F811
    res = run("webhooks", *args)
    assert res.exit_code == 1, res.output
    [line] = res.stderr.splitlines()
    assert line.startswith("error: ") and message in line, line
    assert res.stdout == ""


def test_test_and_rotate_secret_with_a_verifying_receiver(
    api: Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS", '["127.0.0.1/32"]')
    reset_settings()
    receiver = VerifyingReceiver()
    receiver.start()
    try:
        [row, [secret]] = rows(
            ok("webhooks", "create", receiver.url, "--event-type", "fine_tuning.job.failed")
        )
        receiver.secret = secret
        assert rows(ok("webhooks", "test", row[0])) == [[row[0], "fine_tuning.job.failed", "200"]]
        [body, headers, verified] = receiver.requests[0]
        assert verified and openai.OpenAI(api_key="x").webhooks.unwrap(body, headers, secret=secret).type == (
            "fine_tuning.job.failed"
        )
        rotated = ok("webhooks", "rotate-secret", row[0])
        [again, [new_secret]] = rows(rotated)
        assert again[0] == row[0] and new_secret != secret and "shown only once" in rotated.stderr
        failed = run("webhooks", "test", row[0], "--event-type", "fine_tuning.job.cancelled")
        assert failed.exit_code == 1  # the receiver still holds the old secret: it answers 401
        assert rows(failed) == [[row[0], "fine_tuning.job.cancelled", "401"]]
        assert failed.stderr.strip() == "error: the endpoint answered HTTP 401 to the test event"
        receiver.secret = new_secret
        assert rows(ok("webhooks", "test", row[0]))[0][2] == "200"
        [kept, [newest]] = rows(ok("webhooks", "rotate-secret", row[0], "--keep-old"))
        assert rows(ok("webhooks", "test", row[0]))[0][2] == "200"  # the old one is still good for a day
        receiver.secret = newest
        assert rows(ok("webhooks", "test", row[0]))[0][2] == "200"
    finally:
        receiver.stop()
