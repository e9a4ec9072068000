"""Stored files under concurrency and faults: a delete never touches another tenant's data."""

from __future__ import annotations

import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.api.conftest import chat, new_key, sdk
from tests.api.server import Server

ROUNDS = 50


def _content(i: int, tag: str, fine_tune: bool) -> bytes:
    if fine_tune:
        rows = [chat(j, note=f"{tag} round {i}") for j in range(12)]
        return ("".join(json.dumps(r) + "\n" for r in rows)).encode()
    return f"{tag} round {i}\n".encode()


def test_delete_racing_an_identical_upload_never_loses_the_other_orgs_file(server: Server) -> None:
    """Org A deletes its file while org B uploads the same bytes, 50 times: B's file always stays whole."""
    a, b = sdk(server, new_key()), sdk(server, new_key())
    tag = f"{server.backend}-{secrets.token_hex(4)}"
    lost: list[str] = []
    with ThreadPoolExecutor(2) as pool:
        for i in range(ROUNDS):
            fine_tune = i % 2 == 1
            purpose = "fine-tune" if fine_tune else "user_data"
            content = _content(i, tag, fine_tune)
            fa = a.files.create(file=("a.jsonl", content), purpose=purpose)
            barrier = threading.Barrier(2)

            def delete(file_id: str = fa.id, gate: threading.Barrier = barrier) -> bool:
                gate.wait()
                return a.files.delete(file_id).deleted

            def upload(data: bytes = content, p: str = purpose, gate: threading.Barrier = barrier) -> str:
                gate.wait()
                return b.files.create(file=("b.jsonl", data), purpose=p).id  # type: ignore[arg-type]

            deleted, uploaded = pool.submit(delete), pool.submit(upload)
            assert deleted.result()
            fb = uploaded.result()
            try:
                got = b.files.content(fb).read()
            except openai.NotFoundError as exc:
                lost.append(f"round {i}: content {exc.message}")
                continue
            if got != content:
                lost.append(f"round {i}: content differs")
            if fine_tune:
                done = b.files.wait_for_processing(fb, poll_interval=0.05, max_wait_seconds=30)
                if done.status != "processed":
                    lost.append(f"round {i}: {done.status} {done.status_details}")
    assert not lost, f"{len(lost)} of {ROUNDS} rounds lost org B's file: {lost[:5]}"


def test_storage_quota_refuses_an_upload_over_it_and_deleting_frees_it(server: Server) -> None:
    client = sdk(server, new_key(policy={"storage_quota_bytes": 100}))
    first = client.files.create(file=("a.txt", b"a" * 60), purpose="user_data")
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.files.create(file=("b.txt", b"b" * 60), purpose="user_data")
    err = info.value.body
    assert isinstance(err, dict) and err["code"] == "storage_quota_exceeded" and err["param"] == "file"
    assert "storage quota of 100 bytes" in err["message"]
    assert [f.id for f in client.files.list()] == [first.id]  # nothing stored for the refused upload
    with pytest.raises(openai.PermissionDeniedError) as info:  # refused while streaming, at the quota
        client.files.create(file=("big.txt", b"z" * 5000), purpose="user_data")
    assert isinstance(info.value.body, dict) and "storage quota of 100 bytes" in info.value.body["message"]
    client.files.create(file=("c.txt", b"c" * 40), purpose="user_data")  # exactly at the quota
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.files.create(file=("d.txt", b"d"), purpose="user_data")
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "storage_quota_exceeded"
    assert list((server.home / "files" / "tmp").glob("*.part")) == []
    for f in client.files.list():
        client.files.delete(f.id)
    second = client.files.create(file=("b.txt", b"b" * 60), purpose="user_data")
    assert client.files.content(second.id).read() == b"b" * 60


def test_concurrent_uploads_cannot_pass_the_quota_together(server: Server) -> None:
    client = sdk(server, new_key(policy={"storage_quota_bytes": 250}))
    barrier = threading.Barrier(6)

    def upload(i: int) -> str:
        barrier.wait()
        try:
            return client.files.create(file=(f"{i}.txt", b"x" * 100), purpose="user_data").id
        except openai.PermissionDeniedError as exc:
            assert isinstance(exc.body, dict) and exc.body["code"] == "storage_quota_exceeded"
            return ""

    with ThreadPoolExecutor(6) as pool:
        stored = [x for x in pool.map(upload, range(6)) if x]
    assert len(stored) == 2 and sum(f.bytes for f in client.files.list()) == 200
