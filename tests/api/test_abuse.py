"""Issue 11 item 8: failed authentication is throttled per client address, and one organization's
concurrent requests are bounded so that another organization is still served.

Each test talks to the live server from its own loopback address (127.0.0.x), so the per-address state it
builds up never reaches the other tests (which connect from 127.0.0.1). No assertion is about time.
"""

from __future__ import annotations

import secrets
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from tests.api.conftest import good_file, new_key
from tests.api.server import Server


def _from(address: str) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (any 127.x.y.z reaches the server)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_failed_auth_is_throttled_per_client_address(server: Server) -> None:
    good = new_key()
    statuses = []
    with _from("127.0.0.3") as attacker:
        for _ in range(100):
            r = attacker.get(f"{server.base_url}/v1/files", headers=_auth("tg-" + secrets.token_hex(16)))
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error" and r.headers["x-request-id"]
        assert set(statuses) == {401, 429} and statuses[0] == 401
        first_429 = statuses.index(429)
        assert all(s == 429 for s in statuses[first_429:])  # no more key checks once throttled
        # By design the address is throttled, not the keys it guesses: a good key from the same address
        # waits too (otherwise a guessed key would still be tested); see docs/reliability.md.
        r = attacker.get(f"{server.base_url}/v1/files", headers=_auth(good))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        # requests without any key are not guesses: they still get their 401
        assert attacker.get(f"{server.base_url}/v1/files").status_code == 401
    with _from("127.0.0.4") as other:  # another address is not affected
        assert other.get(f"{server.base_url}/v1/files", headers=_auth(good)).status_code == 200


def _upload_head(base_url: str, key: str, body_len: int) -> bytes:
    host = urlsplit(base_url).netloc
    return (
        f"POST /v1/files HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {key}\r\n"
        f"content-type: multipart/form-data; boundary=XyZ\r\ncontent-length: {body_len}\r\n\r\n"
    ).encode()


def _upload_body() -> bytes:
    return (
        b'--XyZ\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b'--XyZ\r\ncontent-disposition: form-data; name="file"; filename="t.jsonl"\r\n'
        b"content-type: application/jsonl\r\n\r\n" + good_file() + b"\r\n--XyZ--\r\n"
    )


@contextmanager
def _held_upload(base_url: str, key: str) -> Iterator[socket.socket]:
    """An upload whose body is held back: the request is in flight until ``_finish`` sends the rest."""
    body = _upload_body()
    parts = urlsplit(base_url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30, source_address=("127.0.0.5", 0))
    try:
        sock.sendall(_upload_head(base_url, key, len(body)) + body[:10])
        yield sock
    finally:
        sock.close()


def _finish(sock: socket.socket) -> int:
    sock.sendall(_upload_body()[10:])
    return _status_of(sock)


def _status_of(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def _answered(socks: list[socket.socket], n: int) -> list[socket.socket]:
    """The first ``n`` sockets that have an answer to read (waits for them; a liveness guard only)."""
    ready: set[socket.socket] = set()
    deadline = time.monotonic() + 30
    while len(ready) < n:
        assert time.monotonic() < deadline, f"only {len(ready)} of {n} refusals arrived"
        readable, _, _ = select.select([s for s in socks if s not in ready], [], [], 1.0)
        ready.update(readable)
    return [s for s in socks if s in ready]


def test_one_org_cannot_exceed_its_concurrency_bound(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunegate.settings import reset_settings

    bound = 3
    monkeypatch.setenv("TUNEGATE_MAX_CONCURRENT_REQUESTS_PER_ORG", str(bound))
    reset_settings()  # the in-process server reads the settings per request
    flood, calm = new_key(rate_limit_per_minute=1_000_000), new_key()
    url = f"{server.base_url}/v1/models"
    with ExitStack() as stack, _from("127.0.0.6") as http:
        assert http.get(url, headers=_auth(flood)).status_code == 200  # the key is known to be this org's
        # bound + 2 slow requests of one org: the server admits `bound`, the other two are refused at once
        held = [stack.enter_context(_held_upload(server.base_url, flood)) for _ in range(bound + 2)]
        refused = _answered(held, 2)
        assert [_status_of(s) for s in refused] == [429, 429]
        admitted = [s for s in held if s not in refused]
        # while they are in flight, the flooding org's next request is refused and the other org is served
        r = http.get(url, headers=_auth(flood))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "too many concurrent requests" in r.json()["error"]["message"].lower()
        assert r.json()["error"]["code"] == "too_many_concurrent_requests"
        assert [http.get(url, headers=_auth(calm)).status_code for _ in range(5)] == [200] * 5
        # the admitted requests complete normally and give their slots back
        assert [_finish(s) for s in admitted] == [200] * bound
        assert http.get(url, headers=_auth(flood)).status_code == 200
        files = http.get(f"{server.base_url}/v1/files", headers=_auth(flood)).json()["data"]
        assert len(files) == bound  # only the admitted uploads were stored


def test_concurrency_bound_is_released_after_errors(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunegate.settings import reset_settings

    monkeypatch.setenv("TUNEGATE_MAX_CONCURRENT_REQUESTS_PER_ORG", "2")
    reset_settings()
    key = new_key()
    with _from("127.0.0.7") as http:
        for _ in range(10):  # 404s, 422s and 400s must not leak slots
            assert http.get(f"{server.base_url}/v1/files/file-nope", headers=_auth(key)).status_code == 404
            r = http.post(f"{server.base_url}/v1/fine_tuning/jobs", headers=_auth(key), json={"model": 1})
            assert r.status_code == 422
        assert http.get(f"{server.base_url}/v1/files", headers=_auth(key)).status_code == 200
