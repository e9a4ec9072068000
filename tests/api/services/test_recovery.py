"""The API killed mid-upload (SIGKILL of a real uvicorn process while a slow client streams a body): nothing
half-written is visible, the next start's sweep leaves no temp upload or orphaned object behind, and an API
process still running sweeps the killed one's temp upload without a restart. Recovery at startup processes
every file left ``uploaded``, fairly across organizations, and ends the ones it cannot process ``error``."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from models.db import session_scope
from models.keys import create_key
from models.tables import File, Organization
from tests.api.conftest import chat, jsonl, new_key
from tests.api.server import uvicorn_process, wait_for
from tunegate.settings import get_settings, reset_settings
from tunegate.storage import get_storage


def _parts(home: Path) -> list[Path]:
    return list((home / "files" / "tmp").glob("*.part")) if (home / "files" / "tmp").is_dir() else []


def _objects(home: Path) -> list[Path]:
    root = home / "files"
    return [p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts]


def _kill_mid_upload(proc: subprocess.Popen[bytes], base: str, key: str, home: Path) -> None:
    """A slow client streams a fine-tune upload to the API ``proc`` until part of it is on disk (a ``.part``
    temp file), then the process is killed with SIGKILL."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    boundary = "slowboundary"
    head = (
        f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    part = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.jsonl"\r\n\r\n'
    ).encode()
    line = b'{"prompt": "What is 1 + 1?", "completion": "2"}\n'
    with sock:
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
        # the slow client: a line at a time until the server has some of the body on disk
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in _parts(home)):
            assert time.monotonic() < deadline, "the upload never reached storage while streaming"
            sock.sendall(b"%x\r\n%s\r\n" % (len(line), line))
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def test_api_killed_mid_upload_leaves_nothing_after_the_next_start(
    migrated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEGATE_STORAGE_SWEEP_GRACE_S", "0")
    key = new_key()
    auth = {"Authorization": f"Bearer {key}"}
    with uvicorn_process(migrated_home) as (proc, base):
        kept = httpx.post(
            f"{base}/v1/files",
            headers=auth,
            files={"file": ("kept.txt", b"kept")},
            data={"purpose": "user_data"},
        ).json()["id"]
        _kill_mid_upload(proc, base, key, migrated_home)
    assert _parts(migrated_home) and len(_objects(migrated_home)) == 1  # half-written, but under no key
    orphan = migrated_home / "files" / "ab" / "cd" / ("ab" * 32 + ".0123456789abcdef")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"committed, but the process died before its row was written")

    with uvicorn_process(migrated_home) as (_, base):
        assert _parts(migrated_home) == [] and len(_objects(migrated_home)) == 1 and not orphan.exists()
        listed = httpx.get(f"{base}/v1/files", headers=auth, timeout=10)
        assert listed.status_code == 200 and [f["id"] for f in listed.json()["data"]] == [kept]
        assert httpx.get(f"{base}/v1/files/{kept}/content", headers=auth, timeout=10).content == b"kept"


def test_a_running_api_sweeps_the_temp_upload_of_a_process_killed_mid_upload(
    migrated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 29 (section 6): the ``.part`` file stayed until the next start. Two API processes share the disk
    (as uvicorn workers, or an API and its replacement, do); one is killed mid-upload, and the other removes
    the left-over temp upload once it is older than the grace, while it runs."""
    monkeypatch.setenv("TUNEGATE_STORAGE_SWEEP_GRACE_S", "1")
    monkeypatch.setenv("TUNEGATE_STORAGE_SWEEP_INTERVAL_S", "0.2")
    key = new_key()
    with uvicorn_process(migrated_home) as (_, survivor):
        with uvicorn_process(migrated_home) as (victim, base):
            _kill_mid_upload(victim, base, key, migrated_home)
        left = _parts(migrated_home)
        assert left, "the killed upload left no temp file"
        wait_for(lambda: not any(p.exists() for p in left), "the running API to sweep the temp upload", 30)
        assert httpx.get(f"{survivor}/healthz", timeout=10).status_code == 200


POISONED = {
    "messages": [{"role": "user", "content": "What is \ud800?"}, {"role": "assistant", "content": "ok"}]
}


def _stuck_file(org_id: str, file_id: str, content: bytes) -> None:
    """A file left ``uploaded`` (the process stopped before processing it), stored as the old upload
    checks accepted it: straight into storage and the database."""
    storage = get_storage(get_settings())
    staged = storage.stage(io.BytesIO(content), max_bytes=len(content))
    with session_scope() as s:
        s.add(
            File(
                id=file_id,
                org_id=org_id,
                filename=f"{file_id}.jsonl",
                purpose="fine-tune",
                bytes=staged.size,
                sha256=staged.sha256,
                storage_key=storage.commit(staged),
                status="uploaded",
            )
        )


def test_recovery_processes_every_stuck_file_fairly_and_ends_poisoned_ones_error(
    migrated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 29: startup recovery took the first 100 stuck files by id, so 113 poisoned files of one
    organization (a lone surrogate on line 2, which crashed processing) kept another organization's file
    ``uploaded`` for good. Now every stuck file is processed, round-robin by organization: B's file is
    processed and every one of A's ends ``error`` naming the line and field."""
    monkeypatch.setenv("TUNEGATE_MIN_EXAMPLES", "2")
    reset_settings()
    poisoned = jsonl([chat(1)]) + json.dumps(POISONED).encode() + b"\n" + jsonl([chat(2), chat(3)])
    assert b"\\ud800" in poisoned
    with session_scope() as s:
        org_a = Organization(name="tenant-a", policy={})
        s.add(org_a)
        s.flush()
        a_id = org_a.id
        b = create_key(s, "tenant-b")
    a_files = [f"file-a{i:04d}" for i in range(113)]
    for file_id in a_files:
        _stuck_file(a_id, file_id, poisoned)
    _stuck_file(b.org_id, "file-zzzz", jsonl([chat(i) for i in range(3)]))  # sorts after all of A's

    def statuses(ids: list[str]) -> list[str]:
        with session_scope() as s:
            return [row.status for row in s.query(File).filter(File.id.in_(ids))]

    with uvicorn_process(migrated_home) as (_, base):
        auth = {"Authorization": f"Bearer {b.key}"}
        wait_for(
            lambda: (
                httpx.get(f"{base}/v1/files/file-zzzz", headers=auth, timeout=10).json()["status"]
                != "uploaded"
            ),
            "tenant B's file to be processed",
            60,
        )
        shown = httpx.get(f"{base}/v1/files/file-zzzz", headers=auth, timeout=10).json()
        assert shown["status"] == "processed", shown
        wait_for(lambda: "uploaded" not in statuses(a_files), "every file of tenant A to be processed", 120)
    assert set(statuses(a_files)) == {"error"}
    with session_scope() as s:
        details = {row.status_details for row in s.query(File).filter(File.id.in_(a_files))}
    [detail] = details
    assert detail is not None and "line 2, field 'messages[0].content'" in detail, detail
    assert "lone UTF-16 surrogate" in detail
