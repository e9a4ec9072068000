"""Checks on uploaded training files: fast structural checks at upload, semantic checks in processing.

Upload (synchronous, answers 400 naming the line): UTF-8 (BOM allowed), CRLF tolerated, blank lines skipped,
one JSON object per line in a known example format (tool definitions and calls well-formed). Processing (after
the upload answered; the file goes ``uploaded`` -> ``processed`` | ``error``): known roles, an assistant turn
to train on, non-empty content, tool outputs answering known calls of declared tools, example length (tool
list and calls included) within the model context, at least ``min_examples`` examples. Both stream the
stored file line by line, in constant memory.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO

from sqlalchemy import select

from api.services.tokens import TokenCounter, counter_for
from models.base import utcnow
from models.db import session_scope
from models.tables import File
from tunegate.conversation import check_example, decode_json_line, iter_lines, parse_example
from tunegate.errors import InvalidFile
from tunegate.settings import Settings, get_settings
from tunegate.storage import ObjectMissing, Staged, get_storage
from tunegate.unicode import escaped

log = logging.getLogger(__name__)


MIN_LINE_BYTES = 1 << 20
BYTES_PER_TOKEN_MAX = 64  # generous: JSON unicode escapes of multi-byte text in one token


def max_line_bytes(settings: Settings) -> int:
    """No valid example is longer than this many bytes on its line."""
    return max(MIN_LINE_BYTES, settings.max_example_tokens * BYTES_PER_TOKEN_MAX)


def _check_line_lengths(fh: BinaryIO, limit: int) -> None:
    """Refuse a line over ``limit`` bytes before anything buffers whole lines (constant memory)."""
    line, length = 1, 0
    while chunk := fh.read(1 << 16):
        parts = chunk.split(b"\n")
        for i, part in enumerate(parts):
            length += len(part)
            if length > limit:
                raise InvalidFile(f"line is longer than {limit} bytes", line=line)
            if i < len(parts) - 1:
                line, length = line + 1, 0


def check_upload(staged: Staged, filename: str, *, parse: bool, settings: Settings | None = None) -> int:
    """Count the JSONL lines of a staged upload; raise ``InvalidFile`` (400) at the first bad line."""
    settings = settings or get_settings()
    with staged.open() as fh:
        _check_line_lengths(fh, max_line_bytes(settings))
    n = 0
    with staged.open() as fh:
        for line, text in iter_lines(fh):
            obj = decode_json_line(text, line)
            if parse:
                parse_example(obj, line)
            n += 1
    if n == 0:
        raise InvalidFile("the file is empty: expected one JSON object per line", filename=filename)
    return n


@dataclass
class Report:
    """Problems found while processing, capped for ``status_details``; ``total`` counts all of them."""

    cap: int
    total: int = 0
    lines: list[str] = field(default_factory=list)

    def add(self, problem: InvalidFile) -> None:
        self.total += 1
        if len(self.lines) < self.cap:
            self.lines.append(escaped(problem.message))  # it may quote the line's text: always storable

    def render(self) -> str:
        head = f"{self.total} problem{'s' if self.total != 1 else ''} found"
        more = self.total - len(self.lines)
        tail = [f"... and {more} more"] if more > 0 else []
        return "\n".join([head, *self.lines, *tail])


def _check_example_length(conv_line: int, n_tokens: int, counter: TokenCounter) -> InvalidFile | None:
    if n_tokens <= counter.limit:
        return None
    how = "tokens" if counter.exact else "tokens (estimated)"
    return InvalidFile(f"example is {n_tokens} {how}, over the limit of {counter.limit}", line=conv_line)


def scan(fh_lines: Iterable[tuple[int, str]], settings: Settings) -> tuple[int, Report]:
    """Run every processing check over ``(line, text)`` pairs; returns (examples, report)."""
    counter = counter_for(settings.default_model, settings)
    report = Report(cap=settings.max_status_details)
    n = 0
    for line, text in fh_lines:
        try:
            conv = parse_example(decode_json_line(text, line), line)
        except InvalidFile as exc:
            report.add(exc)
            continue
        try:
            problems = check_example(conv)
            too_long = _check_example_length(line, counter.count(conv), counter)
        except Exception as exc:  # a bug or a line nothing refused: the file ends 'error' naming the line
            log.exception("processing stopped at line %d: %s", line, type(exc).__name__)
            report.add(_line_failed(line, exc))
            break
        n += 1
        for problem in problems:
            report.add(problem)
        if too_long is not None:
            report.add(too_long)
    if n < settings.min_examples:
        report.add(InvalidFile(f"the file has {n} examples; at least {settings.min_examples} are required"))
    return n, report


def _line_failed(line: int, exc: Exception) -> InvalidFile:
    return InvalidFile(
        f"this line could not be processed ({type(exc).__name__}); the lines after it were not checked",
        line=line,
        code="processing_failed",
    )


MISSING_CONTENT = "the stored content of this file is missing; upload it again"
UNPROCESSABLE = "the file could not be processed ({}); upload it again"


def process_file(file_id: str) -> None:
    """Check a stored ``fine-tune`` file and set its status; runs after the upload answered.

    A file whose stored object is gone ends ``error`` with a message that names no storage key.
    """
    settings = get_settings()
    with session_scope() as session:
        row = session.scalar(select(File).where(File.id == file_id, File.deleted_at.is_(None)))
        if row is None or row.status != "uploaded":
            return
        key = row.storage_key
    report = Report(cap=settings.max_status_details)
    try:
        with get_storage(settings).open(key) as fh:
            n, report = scan(iter_lines(fh), settings)
    except ObjectMissing:
        log.error("file %s: stored object %s is missing; marking the file error", file_id, key)
        n = 0
        report.add(InvalidFile(MISSING_CONTENT, code="file_content_missing"))
    except InvalidFile as exc:  # e.g. invalid UTF-8 (already refused at upload, so the store changed)
        n = 0
        report.add(exc)
    except Exception as exc:  # any other failure still ends the file 'error', never stuck 'uploaded'
        log.exception("file %s: processing failed; marking the file error", file_id)
        n = 0
        report = Report(cap=settings.max_status_details)
        report.add(InvalidFile(UNPROCESSABLE.format(type(exc).__name__), code="processing_failed"))
    with session_scope() as session:
        row = session.get(File, file_id)
        if row is None or row.status != "uploaded":
            return
        row.n_examples = n
        row.status = "error" if report.total else "processed"
        row.status_details = report.render() if report.total else None
    log.info("processed %s: %d examples, %d problems", file_id, n, report.total)


RECOVERY_BATCH = 100  # ids read per organization and query while recovering


def _stuck_page(org_id: str, after: str, before: datetime, batch: int) -> list[str]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(File.id)
                .where(
                    File.org_id == org_id,
                    File.id > after,
                    File.status == "uploaded",
                    File.purpose == "fine-tune",
                    File.deleted_at.is_(None),
                    File.created_at <= before,
                )
                .order_by(File.id)
                .limit(batch)
            )
        )


def stuck_files(batch: int = RECOVERY_BATCH) -> Iterator[str]:
    """Every ``fine-tune`` file left ``uploaded`` by an earlier process, round-robin across organizations: one
    organization's backlog delays another's files by one file per round, never by its whole backlog (issue
    29: the first 100 by id were taken, and 113 of one tenant's files kept another tenant's file stuck).

    Ids are read per organization ``batch`` at a time (keyset pages on the ``(org_id, id)`` index), so memory
    stays bounded; files uploaded after the call started are left to their own upload's processing.
    """
    before = utcnow()
    with session_scope() as session:
        orgs = list(
            session.scalars(
                select(File.org_id)
                .where(File.status == "uploaded", File.purpose == "fine-tune", File.deleted_at.is_(None))
                .distinct()
                .order_by(File.org_id)
            )
        )
    queues: dict[str, deque[str]] = {org: deque() for org in orgs}
    after = dict.fromkeys(orgs, "")
    exhausted: set[str] = set()
    while queues:
        for org in list(queues):
            queue = queues[org]
            if not queue and org not in exhausted:
                page = _stuck_page(org, after[org], before, batch)
                if len(page) < batch:
                    exhausted.add(org)
                if page:
                    after[org] = page[-1]
                    queue.extend(page)
            if not queue:
                del queues[org]
                continue
            yield queue.popleft()


def process_pending(stop: threading.Event | None = None) -> int:
    """Process every file left ``uploaded`` (e.g. the server stopped mid-way), fairly across organizations;
    returns how many were processed. ``stop`` (set at shutdown) ends the run between two files.

    Each file is handled on its own: a file that cannot be processed ends ``error`` (``process_file``); one
    that fails for another reason (e.g. a database error) is logged, stays ``uploaded`` for the next start,
    and the others are still processed.
    """
    done = 0
    for file_id in stuck_files():
        if stop is not None and stop.is_set():
            log.info("recovery stopped at shutdown after %d files", done)
            break
        try:
            process_file(file_id)
        except Exception:  # one file's failure (e.g. a database error) must not stop the others
            log.exception("could not process file %s; continuing with the others", file_id)
        else:
            done += 1
    return done
