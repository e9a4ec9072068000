"""The API killed mid-upload (SIGKILL of a real uvicorn process while a slow client streams a body): nothing
half-written is visible, and the next start's sweep leaves no temp upload or orphaned object behind."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.api.conftest import new_key
from tests.api.server import uvicorn_process


def _parts(home: Path) -> list[Path]:
    return list((home / "files" / "tmp").glob("*.part")) if (home / "files" / "tmp").is_dir() else []


def _objects(home: Path) -> list[Path]:
    root = home / "files"
    return [p for p in root.rglob("*") if p.is_file() and "tmp" not in p.relative_to(root).parts]


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
            while not any(p.stat().st_size > 0 for p in _parts(migrated_home)):
                assert time.monotonic() < deadline, "the upload never reached storage while streaming"
                sock.sendall(b"%x\r\n%s\r\n" % (len(line), line))
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
    assert _parts(migrated_home) and len(_objects(migrated_home)) == 1  # half-written, but under no key
    orphan = migrated_home / "files" / "ab" / "cd" / ("ab" * 32 + ".0123456789abcdef")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"committed, but the process died before its row was written")

    with uvicorn_process(migrated_home) as (_, base):
        assert _parts(migrated_home) == [] and len(_objects(migrated_home)) == 1 and not orphan.exists()
        listed = httpx.get(f"{base}/v1/files", headers=auth, timeout=10)
        assert listed.status_code == 200 and [f["id"] for f in listed.json()["data"]] == [kept]
        assert httpx.get(f"{base}/v1/files/{kept}/content", headers=auth, timeout=10).content == b"kept"
