"""Issue 29 section 1: one tenant cannot deny the service to the others.

- an upload line built to stall the file check (an unterminated string of ``\\"``) is answered at once, and
  ``/healthz`` stays quick meanwhile (a separate uvicorn process: the timing is the server's alone);
- a multipart body of thousands of empty fields is refused while it is still arriving;
- more ``metadata[..]`` filters than a job can hold get a 400 naming the cap, not a 503.

The ``/metrics`` label cardinality is tested in ``tests/api/core/test_metrics.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import anyio
import httpx
import pytest

from api.core.multipart import MAX_CONCURRENT_CHECKS, MAX_PART_HEADER_BYTES, MAX_PARTS, run_check
from api.routes.jobs import MAX_METADATA_FILTERS
from tests.api.conftest import chat, good_file, new_key
from tests.api.server import Server, uvicorn_process
from tests.api.test_body_limits import _send_until_answered

# A line that is valid JSON up to an unterminated string of escaped quotes: the regex that stripped strings
# before the depth check retried at each of its quotes (1 MiB held the GIL for over 2 minutes).
HOSTILE_HEAD = '{"messages": [{"role": "user", "content": "'
# the test servers' longest line (api.services.processing.max_line_bytes: 512 tokens -> 1 MiB)
LINE_LIMIT = 1 << 20
CHECK_BOUND_S = 1.0  # issue 29: "a 1 MiB hostile line is answered within a second"
HEALTHZ_BOUND_S = 0.1  # "... and /healthz stays under 100 ms meanwhile"
# On a loaded test machine (2 cores shared with other suites) a request now and then waits longer for reasons
# of its own; a tenth of them may, none for as long as the check itself may take.
HEALTHZ_OUTLIERS = 0.1


def hostile_line(size: int) -> str:
    return HOSTILE_HEAD + '\\"' * ((size - len(HOSTILE_HEAD)) // 2)


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def own_api(server: Server) -> Iterator[str]:
    """A uvicorn process of its own on the test server's database, accepting files of a few MiB."""
    env = {"TUNEGATE_MAX_UPLOAD_BYTES": str(8 << 20), "TUNEGATE_LOG_LEVEL": "WARNING"}
    with uvicorn_process(server.home, env) as (_, base):
        # one ordinary upload first: what a process does once (lazy imports, first connections) is not timed
        r = httpx.post(
            f"{base}/v1/files",
            headers=_auth(new_key()),
            files={"file": ("warm.jsonl", good_file())},
            data={"purpose": "fine-tune"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        yield base


class HealthPoller:
    """Asks ``/healthz`` in a loop from a thread of its own and keeps each answer's latency."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx.Client(base_url=base_url, timeout=60)
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            status = self.client.get("/healthz").status_code
            self.latencies.append(time.perf_counter() - start)
            self.statuses.append(status)
            time.sleep(0.005)

    def __enter__(self) -> HealthPoller:
        for _ in range(5):  # a warm connection and database session before anything is measured
            assert self.client.get("/healthz").status_code == 200
        self._thread.start()
        while not self.latencies:
            time.sleep(0.001)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
        self.client.close()


@pytest.mark.parametrize("where", ["files", "uploads"])
def test_hostile_line_is_answered_within_a_second_and_healthz_stays_quick(own_api: str, where: str) -> None:
    """Issue 29.1: a 1 MiB line of ``\\"`` in an unterminated string is refused (400 naming the file and
    the line) within a second, through ``POST /v1/files`` and through ``/v1/uploads`` (the check of the
    assembled file), and ``/healthz`` answers in under 100 ms meanwhile (before, both waited minutes)."""
    line = hostile_line(LINE_LIMIT)
    assert len(line.encode()) <= LINE_LIMIT  # within the line limit: the content check has to read it
    content = (json.dumps(chat(1)) + "\n" + line + "\n").encode()
    key = new_key()
    with (
        httpx.Client(base_url=own_api, headers=_auth(key), timeout=30) as http,
        HealthPoller(own_api) as poll,
    ):
        start = time.perf_counter()
        if where == "files":
            files = {"file": ("hostile.jsonl", content)}
            r = http.post("/v1/files", files=files, data={"purpose": "fine-tune"})
        else:  # parts of at most 64 KiB (the test server's part limit), then the check at completion
            up = http.post(
                "/v1/uploads",
                json={
                    "filename": "hostile.jsonl",
                    "purpose": "fine-tune",
                    "bytes": len(content),
                    "mime_type": "text/jsonl",
                },
            ).json()
            step = 64 * 1024
            parts = [
                http.post(f"/v1/uploads/{up['id']}/parts", files={"data": ("p", content[i : i + step])})
                for i in range(0, len(content), step)
            ]
            assert all(p.status_code == 200 for p in parts), parts[-1].text
            start = time.perf_counter()  # the parts only store bytes: the check runs at completion
            r = http.post(
                f"/v1/uploads/{up['id']}/complete", json={"part_ids": [p.json()["id"] for p in parts]}
            )
        took = time.perf_counter() - start
        assert http.get("/v1/files").json()["data"] == []  # nothing stored
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_file" and err["type"] == "invalid_request_error"
    assert "hostile.jsonl" in err["message"] and "line 2" in err["message"], err
    assert "not valid JSON" in err["message"] and "Unterminated string" in err["message"], err
    assert took < CHECK_BOUND_S, f"the hostile line took {took:.2f} s to refuse (bound {CHECK_BOUND_S} s)"
    assert set(poll.statuses) == {200}
    assert poll.latencies, "/healthz was never answered while the line was checked"
    slow = sorted(x for x in poll.latencies if x >= HEALTHZ_BOUND_S)
    shown = ", ".join(f"{x * 1000:.0f}" for x in slow)
    # a fast check leaves only a few answers to look at: one slow one among them (a scheduling hiccup of a
    # shared CI machine) is allowed, none of a second or more (before the fix /healthz waited minutes)
    assert len(slow) <= max(1, HEALTHZ_OUTLIERS * len(poll.latencies)), (
        f"{len(slow)} of {len(poll.latencies)} /healthz answers took {HEALTHZ_BOUND_S * 1000:.0f} ms or more "
        f"while the line was checked: {shown} ms"
    )
    assert not slow or slow[-1] < CHECK_BOUND_S, f"/healthz waited {slow[-1]:.2f} s for the check"


def test_file_checks_run_in_threads_a_few_at_once() -> None:
    """The checks run off the event loop, at most ``MAX_CONCURRENT_CHECKS`` at once: more uploads wait for a
    turn instead of taking every thread of the pool the other synchronous routes need."""
    lock, running, most, threads = threading.Lock(), [0], [0], set()

    def check() -> None:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            threads.add(threading.get_ident())
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(3 * MAX_CONCURRENT_CHECKS):
                tg.start_soon(run_check, check)

    anyio.run(main)
    assert most[0] == MAX_CONCURRENT_CHECKS
    assert threading.get_ident() not in threads


def _empty_fields(first: int, n: int) -> bytes:
    return b"".join(
        b'--tgb\r\nContent-Disposition: form-data; name="f%d"\r\n\r\n\r\n' % i
        for i in range(first, first + n)
    )


FILE_PART = (
    b'--tgb\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
    b'--tgb\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n'
    b"Content-Type: application/octet-stream\r\n\r\n" + good_file() + b"\r\n"
)


@pytest.mark.parametrize("where", ["/v1/files", "/v1/uploads/{id}/parts"])
def test_thousands_of_empty_fields_are_refused_while_arriving(
    server: Server, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Issue 29.1: 520k empty, uniquely named form fields added 64 MiB of memory, as all were kept. A body of
    a file and 5,000 empty fields, sent chunked and never ended, gets a 400 naming the limit on parts while
    the client is still sending; nothing is stored."""
    from tunegate.settings import reset_settings

    # limits far above the body, so that only the number of parts can stop it
    monkeypatch.setenv("TUNEGATE_MAX_UPLOAD_BYTES", str(8 << 20))
    monkeypatch.setenv("TUNEGATE_MAX_UPLOAD_PART_BYTES", str(8 << 20))
    reset_settings()  # the in-process server reads the settings per request
    key = new_key()
    path = where
    if "{id}" in where:
        up = httpx.post(
            f"{server.base_url}/v1/uploads",
            headers=_auth(key),
            json={"filename": "t.jsonl", "purpose": "fine-tune", "bytes": 1 << 20, "mime_type": "text/jsonl"},
        )
        assert up.status_code == 200, up.text
        path = where.format(id=up.json()["id"])
    head = FILE_PART if where == "/v1/files" else FILE_PART.replace(b'name="file"', b'name="data"')
    filler = _empty_fields(0, 100)  # 100 empty fields a chunk, 5,000 in all
    headers = {**_auth(key), "Content-Type": "multipart/form-data; boundary=tgb"}
    status, resp_headers, body = _send_until_answered(
        server, path, headers, head, filler, len(head) + 50 * len(filler)
    )
    assert status == 400, body
    assert resp_headers.get("connection") == "close"  # the rest of the body is not read either
    err = body["error"]
    assert isinstance(err, dict) and err["code"] == "too_many_parts"
    assert err["type"] == "invalid_request_error" and str(MAX_PARTS) in str(err["message"])
    files = httpx.get(f"{server.base_url}/v1/files", headers=_auth(key)).json()["data"]
    assert files == []
    assert list((server.home / "files").rglob("*.part")) == []


def test_a_file_with_its_fields_is_still_accepted(server: Server) -> None:
    """The usual multipart body (purpose, expiry, file) stays well within the limits."""
    r = httpx.post(
        f"{server.base_url}/v1/files",
        headers=_auth(new_key()),
        files={"file": ("t.jsonl", good_file())},
        data={
            "purpose": "fine-tune",
            "expires_after[anchor]": "created_at",
            "expires_after[seconds]": "3600",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_huge_part_headers_are_refused(server: Server) -> None:
    """A part's headers are bounded in all, not only line by line (python-multipart's own limits: 8 lines of
    4 KiB): five header lines of 4,000 bytes pass those but not ours."""
    junk = b"".join(b"X-Junk-%d: %s\r\n" % (i, b"j" * 4000) for i in range(5))
    assert len(junk) > MAX_PART_HEADER_BYTES
    body = (
        FILE_PART.replace(b"Content-Type: application", junk + b"Content-Type: application") + b"--tgb--\r\n"
    )
    r = httpx.post(
        f"{server.base_url}/v1/files",
        headers={**_auth(new_key()), "Content-Type": "multipart/form-data; boundary=tgb"},
        content=body,
        timeout=30,
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "invalid_multipart"
    assert str(MAX_PART_HEADER_BYTES) in r.json()["error"]["message"]


def _jobs_with_filters(server: Server, key: str, n: int) -> httpx.Response:
    query = "&".join(f"metadata[{i}]=" for i in range(n))  # raw brackets: the shortest request line
    return httpx.get(f"{server.base_url}/v1/fine_tuning/jobs?{query}", headers=_auth(key), timeout=60)


@pytest.mark.parametrize("n", [MAX_METADATA_FILTERS + 1, 1_000])
def test_too_many_metadata_filters_are_a_400_naming_the_cap(server: Server, n: int) -> None:
    """Issue 29.1: 1,100 ``metadata[..]=`` filters on the jobs list answered 503 ``transient`` (SQLite
    refused the statement). More than a job's metadata can hold are refused with a 400 naming the cap."""
    r = _jobs_with_filters(server, new_key(), n)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["code"] == "too_many_metadata_filters"
    assert err["param"] == "metadata" and f"at most {MAX_METADATA_FILTERS}" in err["message"]


def test_metadata_filters_up_to_the_cap_still_filter(server: Server) -> None:
    key = new_key()
    assert _jobs_with_filters(server, key, MAX_METADATA_FILTERS).json()["data"] == []
    same_key = "&".join(f"metadata[{quote('k')}]={i}" for i in range(100))  # one key, asked again: one filter
    r = httpx.get(f"{server.base_url}/v1/fine_tuning/jobs?{same_key}", headers=_auth(key), timeout=60)
    assert r.status_code == 200, r.text
