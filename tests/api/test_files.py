"""Files through the SDK: upload, processing, list pagination, retrieve, content, delete."""

from __future__ import annotations

import codecs
from pathlib import Path

import openai
import pytest

from tests.api.conftest import chat, good_file, jsonl, processed_file
from tests.api.server import Server


def test_upload_processes_and_round_trips(client: openai.OpenAI) -> None:
    content = good_file(11)
    f = client.files.create(file=("train.jsonl", content), purpose="fine-tune")
    assert f.id.startswith("file-") and f.bytes == len(content) and f.filename == "train.jsonl"
    assert f.status in ("uploaded", "processed") and f.purpose == "fine-tune"
    done = client.files.wait_for_processing(f.id, poll_interval=0.05, max_wait_seconds=30)
    assert done.status == "processed" and done.status_details is None
    assert client.files.retrieve(f.id).status == "processed"
    assert client.files.content(f.id).read() == content


def test_formats_bom_crlf_and_blank_trailing_line(client: openai.OpenAI) -> None:
    rows = [chat(i) for i in range(4)]
    rows += [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(4)]
    rows += [{"instruction": f"do {i}", "input": "", "output": f"done {i}"} for i in range(4)]
    content = codecs.BOM_UTF8 + jsonl(rows, sep="\r\n") + b"\r\n"
    processed_file(client, content)


def test_tool_calling_file_is_processed(client: openai.OpenAI) -> None:
    """OpenAI's function-calling format: tools, assistant turns with only tool_calls, tool messages."""
    content = (Path(__file__).resolve().parents[1] / "data" / "tools.jsonl").read_bytes()
    file_id = processed_file(client, content)
    assert client.files.content(file_id).read() == content


def test_other_purpose_is_stored_without_parsing(client: openai.OpenAI) -> None:
    f = client.files.create(file=("notes.txt", b"not json at all"), purpose="user_data")
    assert f.status == "processed" and f.purpose == "user_data"
    assert client.files.content(f.id).read() == b"not json at all"


def test_list_paginates_across_pages(client: openai.OpenAI) -> None:
    ids = {
        client.files.create(file=(f"f{i}.txt", f"x{i}".encode()), purpose="user_data").id for i in range(5)
    }
    first = client.files.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    seen = [f.id for f in client.files.list(limit=2)]  # the SDK follows `after` over every page
    assert set(seen) == ids and len(seen) == 5
    assert seen == sorted(seen, reverse=True)  # newest first by default
    asc = [f.id for f in client.files.list(limit=3, order="asc")]
    assert asc == sorted(ids)
    assert [f.id for f in client.files.list(purpose="fine-tune")] == []


def test_delete_hides_the_file_and_frees_storage(client: openai.OpenAI, server: Server) -> None:
    content = b"unique content for delete " + server.backend.encode()
    f = client.files.create(file=("d.txt", content), purpose="user_data")
    blobs = [p for p in (server.home / "files").rglob("*") if p.is_file() and p.read_bytes() == content]
    assert len(blobs) == 1
    deleted = client.files.delete(f.id)
    assert deleted.deleted and deleted.id == f.id
    assert not blobs[0].exists()
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.delete(f.id)


def test_identical_uploads_share_a_blob_until_both_are_deleted(client: openai.OpenAI, server: Server) -> None:
    content = b"shared blob " + server.backend.encode()
    a = client.files.create(file=("a.txt", content), purpose="user_data")
    b = client.files.create(file=("b.txt", content), purpose="user_data")
    client.files.delete(a.id)
    assert client.files.content(b.id).read() == content
    client.files.delete(b.id)
    assert not [p for p in (server.home / "files").rglob("*") if p.is_file() and p.read_bytes() == content]
