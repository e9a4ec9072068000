"""The embedded broker as the tests read it."""

from __future__ import annotations

from typing import Any


def queued_tasks() -> list[tuple[str, list[Any]]]:
    """Drain the embedded broker's ``cpu`` queue: (task name, args) of every message sent so far."""
    from tunegate.queue import celery_app

    out: list[tuple[str, list[Any]]] = []
    with celery_app().connection_for_read() as conn, conn.SimpleQueue("cpu", no_ack=True) as q:
        while True:
            try:
                msg = q.get(block=False)
            except q.Empty:
                return out
            args = msg.decode()[0] if isinstance(msg.decode(), list | tuple) else []
            out.append((msg.headers["task"], list(args)))
