"""Issue 29 §5: a PostgreSQL that accepts connections but never answers.

A real API process reaches PostgreSQL through a TCP relay on 127.0.0.1 that this test can freeze: frozen, it
keeps accepting connections and keeps the open ones open, but passes nothing either way, the fault the
hostile-tenant probe saw (the shared PostgreSQL server itself is never stopped). Before the fix, health,
list and upload requests hung past 25 s, and the hung requests kept their organization's concurrency slots
after the database came back.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.api.conftest import good_file, new_key
from tests.api.server import pg_schema_url, uvicorn_process

pytestmark = pytest.mark.postgres

STATEMENT_TIMEOUT_S = 1.0  # the client gives up on an unanswered statement or ping 2 s after it
CONNECT_TIMEOUT_S = 2.0  # libpq's smallest
HEALTH_TIMEOUT_S = 1.0
SLOTS = 3  # the organization's concurrent requests
# What a request may take while the database does not answer: a pooled connection's ping (statement timeout
# plus 2 s), then one new connection's handshake; the bound is twice that, for a loaded machine.
BOUND_S = 2 * (STATEMENT_TIMEOUT_S + 2.0 + CONNECT_TIMEOUT_S)


class FreezableRelay:
    """A TCP relay to ``upstream``; frozen, it accepts connections and passes nothing on."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.thawed = threading.Event()
        self.thawed.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self.thawed.clear()

    def thaw(self) -> None:
        self.thawed.set()

    def close(self) -> None:
        self._closed = True
        self.thawed.set()
        for s in [self._listener, *self._sockets]:
            s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self.thawed.wait()  # a connection made while frozen is held open, unanswered, until the thaw
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        self._sockets.append(server)
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.thawed.wait()  # frozen: the bytes wait here, unanswered
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@contextmanager
def relayed_api(home: Path, url: str) -> Iterator[tuple[FreezableRelay, str]]:
    """A real API process (``uvicorn api.main:app``) whose database connections pass through a relay."""
    parts = urlsplit(url)
    relay = FreezableRelay((parts.hostname or "127.0.0.1", parts.port or 5432))
    relayed = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{relay.port}"))
    env = {
        "TUNEGATE_DATABASE_URL": relayed,
        "TUNEGATE_DATABASE_STATEMENT_TIMEOUT_S": str(STATEMENT_TIMEOUT_S),
        "TUNEGATE_DATABASE_CONNECT_TIMEOUT_S": str(CONNECT_TIMEOUT_S),
        "TUNEGATE_HEALTH_TIMEOUT_S": str(HEALTH_TIMEOUT_S),
        "TUNEGATE_MAX_CONCURRENT_REQUESTS_PER_ORG": str(SLOTS),
        "TUNEGATE_AUTH_CACHE_TTL_S": "0",  # every request reads the database, its key included
        "TUNEGATE_LOG_LEVEL": "WARNING",
    }
    try:
        with uvicorn_process(home, env) as (proc, base):
            try:
                yield relay, base
            finally:
                relay.thaw()
                proc.kill()  # the old code's hung requests would hold up a graceful shutdown
    finally:
        relay.close()


def _timed(call: Callable[[], httpx.Response]) -> tuple[int | str, float]:
    start = time.monotonic()
    try:
        status: int | str = call().status_code
    except httpx.TimeoutException:
        status = "no answer"
    return status, time.monotonic() - start


def test_a_database_that_does_not_answer_fails_requests_in_time_and_frees_their_slots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import migrations
    from models.db import reset_engine
    from tunegate.settings import reset_settings

    with pg_schema_url() as url:
        monkeypatch.setenv("TUNEGATE_DATABASE_URL", url)
        monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path))
        reset_settings()
        reset_engine()
        migrations.upgrade()
        auth = {"authorization": f"Bearer {new_key()}"}
        reset_engine()
        with relayed_api(tmp_path, url) as (relay, base), httpx.Client(base_url=base, timeout=25) as http:
            # warm: the key has authenticated (its slots count per organization), pooled connections exist
            assert http.get("/v1/fine_tuning/jobs", headers=auth).status_code == 200
            assert http.get("/v1/files", headers=auth).status_code == 200
            relay.freeze()

            status, took = _timed(lambda: http.get("/healthz"))
            assert status == 503, f"/healthz answered {status} after {took:.1f} s while the database hung"
            assert took < HEALTH_TIMEOUT_S + 2, (
                f"/healthz took {took:.1f} s; its deadline is {HEALTH_TIMEOUT_S} s"
            )

            requests = [  # at once: each holds one of the organization's slots while it waits
                lambda: http.get("/v1/fine_tuning/jobs", headers=auth),
                lambda: http.get("/v1/files", headers=auth),
                lambda: http.post(
                    "/v1/files",
                    headers=auth,
                    files={"file": ("t.jsonl", good_file())},
                    data={"purpose": "fine-tune"},
                ),
            ]
            with ThreadPoolExecutor(len(requests)) as pool:
                answers = list(pool.map(_timed, requests))
            for what, (status, took) in zip(("list jobs", "list files", "upload"), answers, strict=True):
                assert status == 503, f"{what} answered {status} after {took:.1f} s while the database hung"
                assert took < BOUND_S, f"{what} took {took:.1f} s (bound {BOUND_S} s)"

            relay.thaw()
            assert http.get("/healthz").status_code == 200
            # every slot of the organization is free again: SLOTS requests at once, none refused
            with ThreadPoolExecutor(SLOTS) as pool:
                again = list(pool.map(lambda _: http.get("/v1/fine_tuning/jobs", headers=auth), range(SLOTS)))
            assert [r.status_code for r in again] == [200] * SLOTS, [r.text for r in again]
        reset_engine()
    reset_settings()
