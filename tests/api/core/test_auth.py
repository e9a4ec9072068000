"""The authentication cache (api/core/auth.py) over HTTP: revocation within the documented TTL, one query per
poll request once a key is cached, and tenancy with cached keys."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from sqlalchemy import Engine, event

from tests.api.conftest import new_key, processed_file, sdk
from tests.api.server import REPO, Server


def _set_ttl(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """The server (a thread of this process) reads the settings on its next request."""
    from tunegate.settings import reset_settings

    monkeypatch.setenv("TUNEGATE_AUTH_CACHE_TTL_S", str(seconds))
    reset_settings()


def _revoke_with_cli(key: str) -> None:
    """``tunegate keys revoke`` in its own process (as an operator runs it): nothing tells the API."""
    out = subprocess.run(
        [sys.executable, "-c", "from cli import main; main()", "keys", "revoke", key],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "revoked" in out.stdout, out.stderr


def test_a_key_revoked_with_the_cli_is_refused_once_the_cache_ttl_has_passed(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    ttl = 1.0
    _set_ttl(monkeypatch, ttl)
    key = new_key()
    client = sdk(server, key)
    client.fine_tuning.jobs.list()  # authenticated: the key's organization is cached now
    _revoke_with_cli(key)
    # The documented bound: an entry expires ttl seconds after the read that filled it, which was before
    # the revocation committed. (Within the ttl the cached key may still be served.)
    time.sleep(ttl)
    with pytest.raises(openai.AuthenticationError) as info:
        client.fine_tuning.jobs.list()
    assert info.value.code == "api_key_revoked"


def test_with_the_cache_off_a_revoked_key_is_refused_at_once(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    _set_ttl(monkeypatch, 0)
    key = new_key()
    client = sdk(server, key)
    client.fine_tuning.jobs.list()
    _revoke_with_cli(key)
    with pytest.raises(openai.AuthenticationError) as info:
        client.fine_tuning.jobs.list()
    assert info.value.code == "api_key_revoked"


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine of this process (the server's included) executes meanwhile."""
    seen: list[str] = []
    lock = threading.Lock()

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        with lock:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def test_poll_requests_of_a_cached_key_run_one_statement_each(
    server: Server, monkeypatch: pytest.MonkeyPatch, statements: list[str]
) -> None:
    _set_ttl(monkeypatch, 60)
    client = sdk(server, new_key())
    job = client.fine_tuning.jobs.create(model="smollm2-135m", training_file=processed_file(client))
    fresh = sdk(server, new_key())  # a key nothing has authenticated yet
    statements.clear()
    with pytest.raises(openai.NotFoundError):
        fresh.fine_tuning.jobs.retrieve(job.id)
    assert len(statements) == 2, statements  # a cache miss: the key (joined to its org), then the job
    polls = {
        "retrieve": lambda: client.fine_tuning.jobs.retrieve(job.id),
        "list_events": lambda: client.fine_tuning.jobs.list_events(job.id, limit=5),
        "list": lambda: client.fine_tuning.jobs.list(limit=5),
    }
    for name, poll in polls.items():
        statements.clear()
        poll()
        assert len(statements) == 1, (name, statements)


def test_cached_keys_keep_tenants_apart(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    _set_ttl(monkeypatch, 60)
    a, b = sdk(server, new_key()), sdk(server, new_key())
    job = a.fine_tuning.jobs.create(model="smollm2-135m", training_file=processed_file(a))
    for _ in range(2):  # the second round is served from the cache
        assert a.fine_tuning.jobs.retrieve(job.id).id == job.id
        assert [e.id for e in a.fine_tuning.jobs.list_events(job.id)]
        with pytest.raises(openai.NotFoundError):
            b.fine_tuning.jobs.retrieve(job.id)
        with pytest.raises(openai.NotFoundError):
            b.fine_tuning.jobs.list_events(job.id)
        assert list(b.fine_tuning.jobs.list()) == []
        assert [j.id for j in a.fine_tuning.jobs.list()] == [job.id]
