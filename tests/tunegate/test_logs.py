"""tunegate.logs: stdlib logging as JSON lines carrying the fields of the current log scope."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tunegate import logs
from tunegate.settings import Settings


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _configured() -> io.StringIO:
    stream = io.StringIO()
    logs.configure(Settings(log_format="json", log_level="INFO"), stream=stream)
    return stream


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_stdlib_lines_are_json_with_the_job_scope() -> None:
    stream = _configured()
    log = logging.getLogger("tests.logs")
    with logs.bind_job("ftjob-1", "train"):
        log.info("epoch %d done", 2, extra={"loss": 0.5})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("stage failed")
    log.warning("outside")
    inside, failed, outside = _records(stream)
    assert inside["event"] == "epoch 2 done" and inside["loss"] == 0.5 and inside["level"] == "info"
    assert inside["job_id"] == "ftjob-1" and inside["stage"] == "train" and inside["logger"] == "tests.logs"
    assert failed["job_id"] == "ftjob-1" and "ValueError: boom" in failed["exception"]
    assert "job_id" not in outside and outside["level"] == "warning"


def test_a_field_bound_in_a_copy_of_the_context_reaches_later_lines() -> None:
    """As FastAPI runs a sync dependency in a copy of the request's context (a worker thread)."""
    stream = _configured()
    with logs.log_scope(request_id="req_1"):
        ctx = contextvars.copy_context()
        thread = threading.Thread(target=ctx.run, args=(logs.bind,), kwargs={"org_id": "org-1"})
        thread.start()
        thread.join()
        logging.getLogger("tests.logs").info("answered")
    (line,) = _records(stream)
    assert line["request_id"] == "req_1" and line["org_id"] == "org-1"


def test_configure_twice_keeps_one_handler() -> None:
    _configured()
    stream = _configured()
    logging.getLogger("tests.logs").warning("once")
    assert len(_records(stream)) == 1
