"""File processing: exact token counts with a model's tokenizer.json, the estimate without one, resuming
(every stuck file, fairly across organizations), and files that cannot be processed ending ``error``."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from api.services.processing import process_pending, scan, stuck_files
from api.services.tokens import counter_for
from models.db import session_scope
from models.tables import File, Organization
from tests.api.conftest import chat, jsonl
from tests.utils.tiny_model import build_tiny_tokenizer
from tunegate.conversation import Conversation, Message, ToolCall, iter_lines
from tunegate.settings import Settings, get_settings, reset_settings
from tunegate.storage import get_storage


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    build_tiny_tokenizer(d)
    (d / "config.json").write_text('{"max_position_embeddings": 64}')
    return d


def test_counter_uses_tokenizer_and_context(tiny_dir: Path) -> None:
    settings = Settings(models={"tiny": str(tiny_dir)}, default_model="tiny", max_example_tokens=8192)
    counter = counter_for("tiny", settings)
    assert counter.exact and counter.limit == 64
    conv = Conversation(messages=(Message("user", "The answer is 42."), Message("assistant", "ok")))
    assert 4 < counter.count(conv) < 40


def test_estimate_without_tokenizer() -> None:
    counter = counter_for("smollm2-135m", Settings(max_example_tokens=100, home=Path("/nonexistent")))
    assert not counter.exact and counter.limit == 100
    conv = Conversation(messages=(Message("user", "x" * 400), Message("assistant", "y")))
    assert counter.count(conv) == 2 + (100 + 4) + (1 + 4)


def test_estimate_counts_tool_calls_and_the_tool_list() -> None:
    counter = counter_for("smollm2-135m", Settings(max_example_tokens=100, home=Path("/nonexistent")))
    tools = ({"type": "function", "function": {"name": "f"}},)
    call = ToolCall("c1", "f", '{"a": 1}')
    conv = Conversation((Message("user", "x" * 4), Message("assistant", "", tool_calls=(call,))), tools=tools)
    listed, called = -(-len(json.dumps(list(tools))) // 4), -(-len(call.as_json()) // 4)
    assert counter.count(conv) == 2 + (listed + 4) + (1 + 4) + (called + 4)


def test_scan_flags_examples_over_the_model_context(tiny_dir: Path) -> None:
    settings = Settings(models={"tiny": str(tiny_dir)}, default_model="tiny", min_examples=2)
    rows = [chat(1), {"prompt": "The answer is 42. " * 30, "completion": "ok"}, chat(2)]
    n, report = scan(iter_lines(io.BytesIO(jsonl(rows))), settings)
    assert n == 3 and report.total == 1
    assert report.lines[0].startswith("line 2") and "over the limit of 64" in report.lines[0]


def test_files_left_uploaded_are_processed_on_restart(
    migrated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEGATE_MIN_EXAMPLES", "3")
    reset_settings()
    storage = get_storage(get_settings())
    staged = storage.stage(io.BytesIO(jsonl([chat(i) for i in range(3)])), max_bytes=10_000)
    key = storage.commit(staged)
    with session_scope() as s:
        org = Organization(name="o", policy={})
        s.add(org)
        s.flush()
        row = File(
            org_id=org.id,
            filename="t.jsonl",
            purpose="fine-tune",
            bytes=staged.size,
            sha256=staged.sha256,
            storage_key=key,
            status="uploaded",
        )
        s.add(row)
        s.flush()
        file_id = row.id
    assert process_pending() == 1
    with session_scope() as s:
        done = s.get(File, file_id)
        assert done is not None and done.status == "processed" and done.n_examples == 3


def test_resume_marks_a_missing_object_error_and_processes_every_later_file(
    migrated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11.2: the first file left 'uploaded' lost its stored object; the two after it are healthy."""
    monkeypatch.setenv("TUNEGATE_MIN_EXAMPLES", "3")
    reset_settings()
    storage = get_storage(get_settings())
    with session_scope() as s:
        org = Organization(name="o", policy={})
        s.add(org)
        s.flush()
        ids, keys = [], []
        for i in range(3):
            staged = storage.stage(io.BytesIO(jsonl([chat(i * 10 + j) for j in range(3)])), max_bytes=10_000)
            key = storage.commit(staged)
            row = File(
                org_id=org.id,
                filename=f"t{i}.jsonl",
                purpose="fine-tune",
                bytes=staged.size,
                sha256=staged.sha256,
                storage_key=key,
                status="uploaded",
            )
            s.add(row)
            s.flush()
            ids.append(row.id)
            keys.append(key)
    storage.delete(keys[0])  # the first file's object is gone (as after the cross-tenant delete race)
    process_pending()
    with session_scope() as s:
        rows = [s.get(File, i) for i in ids]
        assert [r.status for r in rows if r is not None] == ["error", "processed", "processed"]
        details = rows[0].status_details if rows[0] is not None else None
    assert details is not None and "stored content of this file is missing" in details
    assert keys[0] not in details and keys[0][:5] not in details and "/" not in details


def test_overlong_line_is_refused_before_buffering(tmp_path: Path) -> None:
    from api.services.processing import check_upload, max_line_bytes
    from tunegate.errors import InvalidFile
    from tunegate.storage import LocalStorage

    settings = Settings(max_example_tokens=10)
    limit = max_line_bytes(settings)
    content = jsonl([chat(1), chat(2)]) + b'{"prompt": "' + b"x" * limit + b'"}\n'
    store = LocalStorage(tmp_path)
    staged = store.stage(io.BytesIO(content), max_bytes=len(content))
    with pytest.raises(InvalidFile) as info:
        check_upload(staged, "big.jsonl", parse=True, settings=settings)
    assert info.value.line == 3 and "longer than" in info.value.message


def _org(s: Any, name: str) -> str:
    org = Organization(name=name, policy={})
    s.add(org)
    s.flush()
    return org.id


def _uploaded(s: Any, org_id: str, file_id: str, content: bytes) -> None:
    """A file left ``uploaded`` by a process that stopped before processing it."""
    storage = get_storage(get_settings())
    staged = storage.stage(io.BytesIO(content), max_bytes=len(content))
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


def test_stuck_files_are_taken_round_robin_across_organizations(migrated_home: Path) -> None:
    """Issue 29: recovery takes every stuck file, one organization's backlog interleaved with the others'
    (read in pages per organization, so the page size does not change the order)."""
    content = jsonl([chat(1)])
    with session_scope() as s:
        a, b, c = (_org(s, name) for name in ("a", "b", "c"))
        for i in range(5):
            _uploaded(s, a, f"file-a{i}", content)
        for i in range(2):
            _uploaded(s, b, f"file-b{i}", content)
        _uploaded(s, c, "file-c0", content)
        _uploaded(s, c, "file-c1", content)
        done = s.get(File, "file-c1")
        assert done is not None
        done.status = "processed"
    order = ["file-a0", "file-b0", "file-c0", "file-a1", "file-b1", "file-a2", "file-a3", "file-a4"]
    # the orgs' ids are random: the first round follows them; compare rounds as sets
    for batch in (1, 2, 100):
        got = list(stuck_files(batch=batch))
        assert sorted(got) == sorted(order)
        rounds = [set(got[:3]), set(got[3:5]), got[5:]]
        assert rounds == [set(order[:3]), set(order[3:5]), order[5:]], (batch, got)


def test_a_line_with_a_lone_surrogate_ends_a_stored_file_error_naming_line_and_field() -> None:
    """A file stored before the upload refused lone surrogates: processing crashed in the token count and the
    file stayed ``uploaded``; now the line is a problem like any other."""
    poisoned = {"messages": [{"role": "user", "content": "x\ud800"}, {"role": "assistant", "content": "ok"}]}
    content = jsonl([chat(1), poisoned, chat(2)])
    n, report = scan(iter_lines(io.BytesIO(content)), Settings(min_examples=2, home=Path("/nonexistent")))
    assert n == 2 and report.total == 1
    assert report.lines[0].startswith("line 2, field 'messages[0].content': "), report.lines
    assert "lone UTF-16 surrogate" in report.lines[0]


def test_any_failure_while_processing_ends_the_file_error(
    migrated_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A failure nothing anticipated (here the default model's tokenizer.json is corrupt) ends the file
    ``error`` with a message, never leaves it ``uploaded``; and recovery carries on with the other files."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"max_position_embeddings": 64}')
    (broken / "tokenizer.json").write_text("{not a tokenizer")
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps({"broken": str(broken)}))
    monkeypatch.setenv("TUNEGATE_DEFAULT_MODEL", "broken")
    monkeypatch.setenv("TUNEGATE_MIN_EXAMPLES", "1")
    reset_settings()
    with session_scope() as s:
        org = _org(s, "o")
        _uploaded(s, org, "file-1", jsonl([chat(1)]))
        _uploaded(s, org, "file-2", jsonl([chat(2)]))
    assert process_pending() == 2
    with session_scope() as s:
        rows = [s.get(File, i) for i in ("file-1", "file-2")]
        assert [r.status for r in rows if r is not None] == ["error", "error"]
        details = [r.status_details for r in rows if r is not None]
    assert all(d is not None and "the file could not be processed" in d for d in details), details
