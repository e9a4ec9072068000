"""Streaming ``multipart/form-data`` for ``POST /v1/files`` and ``POST /v1/uploads/{id}/parts``: the file
part goes straight to a staged temp file in storage as the body arrives (no spooled copy of the whole body
first), so an upload takes at most its own size on disk and a client that sends too much is stopped at its
limit (``max_upload_bytes``, or ``max_upload_part_bytes`` for one part).

Fields: ``purpose`` (text, at most 1 KiB), one file part (``file``, or ``data`` for an upload's part), and
other text fields such as ``expires_after[seconds]`` (at most 64 KiB in all, their names included, kept in
``Upload.fields``). Counts are bounded as well as sizes (issue 29: half a million empty, uniquely named fields
took 64 MiB of memory): at most ``MAX_PARTS`` parts, each with at most ``MAX_PART_HEADER_BYTES`` of headers;
past either the request gets a 400 naming the limit at once, before the rest of the body is read.
Any failure aborts the staged file, so nothing half-written stays behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import ParamSpec, TypeVar

from anyio import CapacityLimiter, to_thread
from anyio.lowlevel import RunVar
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from tunegate.errors import InvalidRequest
from tunegate.storage import Staged, StagingWriter, Storage

MAX_PURPOSE_BYTES = 1024
MAX_OTHER_FIELDS_BYTES = 64 * 1024
# Parts of one multipart body: the file and its few fields (purpose, expires_after[anchor], ...[seconds]) with
# room to spare; an OpenAI client sends at most four.
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 16 * 1024  # the header lines of one part (Content-Disposition, Content-Type ...)
# The checks that read every byte of an uploaded file (``api.services.file_store.checked_lines``) run in a
# worker thread, never on the event loop, and at most this many at once in one API process: they wait on a
# limiter of their own, so uploads being checked never take all of the thread pool that the other
# synchronous routes (``/healthz`` among them) run in. Checks are CPU-bound under the GIL: more at once would
# not go faster.
MAX_CONCURRENT_CHECKS = 4
_CHECKS: RunVar[CapacityLimiter] = RunVar("tunegate_file_checks")  # one limiter per event loop

P = ParamSpec("P")
T = TypeVar("T")


async def run_check(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, at most ``MAX_CONCURRENT_CHECKS`` at once."""
    try:
        limiter = _CHECKS.get()
    except LookupError:
        limiter = CapacityLimiter(MAX_CONCURRENT_CHECKS)
        _CHECKS.set(limiter)
    return await to_thread.run_sync(partial(fn, *args, **kwargs), limiter=limiter)


@dataclass
class Upload:
    purpose: str | None = None
    filename: str | None = None
    staged: Staged | None = None
    fields: dict[str, str] = field(default_factory=dict)  # the other text fields


@dataclass
class _Part:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    name: str = ""
    is_file: bool = False
    data: bytearray = field(default_factory=bytearray)


class _Receiver:
    """python-multipart callbacks: text fields into memory (capped), the file part into ``pending``."""

    def __init__(self, storage: Storage, max_bytes: int, file_field: str) -> None:
        self.storage = storage
        self.max_bytes = max_bytes
        self.file_field = file_field
        self.upload = Upload()
        self.writer: StagingWriter | None = None
        self.part = _Part()
        self.header_name = b""
        self.header_value = b""
        self.other_bytes = 0
        self.parts = 0
        self.header_bytes = 0  # of the current part
        self.pending: list[bytes] = []

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise InvalidRequest(
                f"the multipart body has more than {MAX_PARTS} parts; send the file and its fields only",
                param=None,
                code="too_many_parts",
            )
        self.part = _Part()
        self.header_bytes = 0

    def _count_header(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_PART_HEADER_BYTES:
            raise InvalidRequest(
                f"the headers of multipart part {self.parts} are longer than {MAX_PART_HEADER_BYTES} bytes",
                param=None,
                code="invalid_multipart",
            )

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header(end - start)
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.part.headers[self.header_name.lower()] = self.header_value
        self.header_name, self.header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if name is None:
            raise InvalidRequest("a multipart part has no name", param="file", code="invalid_multipart")
        self.part.name = name.decode("utf-8", "replace")
        if b"filename" in options:
            if self.part.name != self.file_field or self.writer is not None:
                raise InvalidRequest(
                    f"send exactly one file, in the field {self.file_field!r}",
                    param=self.file_field,
                    code="invalid_multipart",
                )
            self.part.is_file = True
            self.upload.filename = options[b"filename"].decode("utf-8", "replace")
            self.writer = self.storage.begin(max_bytes=self.max_bytes)
        else:  # a text field's name counts towards the fields' bytes too (a named empty field costs memory)
            self._count_field_bytes(len(name))

    def _count_field_bytes(self, n: int) -> None:
        self.other_bytes += n
        if self.other_bytes > MAX_OTHER_FIELDS_BYTES:
            raise InvalidRequest(
                f"the form fields other than the file take more than {MAX_OTHER_FIELDS_BYTES} bytes",
                param=self.part.name,
                code="invalid_multipart",
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self.part.is_file:
            self.pending.append(chunk)
            return
        cap = MAX_PURPOSE_BYTES if self.part.name == "purpose" else MAX_OTHER_FIELDS_BYTES
        if len(self.part.data) + len(chunk) > cap:
            raise InvalidRequest(
                f"form field {self.part.name!r} is too long", param=self.part.name, code="invalid_multipart"
            )
        self._count_field_bytes(len(chunk))
        self.part.data.extend(chunk)

    def on_part_end(self) -> None:
        if self.part.is_file:
            return
        text = self.part.data.decode("utf-8", "replace")
        if self.part.name == "purpose":
            self.upload.purpose = text
        else:
            self.upload.fields[self.part.name] = text

    def write_pending(self) -> None:
        """Runs in a worker thread: disk writes never block the event loop."""
        assert self.writer is not None
        for chunk in self.pending:
            self.writer.write(chunk)
        self.pending.clear()


async def receive_upload(
    request: Request, storage: Storage, *, max_bytes: int, file_field: str = "file"
) -> Upload:
    """Parse the request's multipart body while it streams; the file part is staged in ``storage``."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        what = "the fields 'file' and 'purpose'" if file_field == "file" else f"the field {file_field!r}"
        raise InvalidRequest(
            f"send the file as multipart/form-data with {what}", param=file_field, code="invalid_multipart"
        )
    rx = _Receiver(storage, max_bytes, file_field)
    callbacks = {
        "on_part_begin": rx.on_part_begin,
        "on_header_field": rx.on_header_field,
        "on_header_value": rx.on_header_value,
        "on_header_end": rx.on_header_end,
        "on_headers_finished": rx.on_headers_finished,
        "on_part_data": rx.on_part_data,
        "on_part_end": rx.on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if rx.pending:
                await run_in_threadpool(rx.write_pending)
        parser.finalize()
        if rx.writer is None:
            raise InvalidRequest(
                f"the field {file_field!r} is required", param=file_field, code="missing_file"
            )
        if rx.pending:
            await run_in_threadpool(rx.write_pending)
        rx.upload.staged = await run_in_threadpool(rx.writer.finish)
    except FormParserError as exc:
        if rx.writer is not None:
            rx.writer.abort()
        raise InvalidRequest(
            "the multipart body is malformed", param=file_field, code="invalid_multipart"
        ) from exc
    except BaseException:
        if rx.writer is not None:
            rx.writer.abort()
        raise
    return rx.upload
