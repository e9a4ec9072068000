"""The embedded broker as the tests read it."""

from __future__ import annotations

from typing import Any


def queued_tasks(queues: tuple[str, ...] | None = None) -> list[tuple[str, list[Any]]]:
    """Drain the embedded broker's queues (default: every one, ``tunegate.queue.QUEUES``): (task name, args)
    of every message sent so far, queue by queue."""
    from tunegate.queue import QUEUES, celery_app

    out: list[tuple[str, list[Any]]] = []
    for name in queues or QUEUES:
        with celery_app().connection_for_read() as conn, conn.SimpleQueue(name, no_ack=True) as q:
            while True:
                try:
                    msg = q.get(block=False)
                except q.Empty:
                    break
                args = msg.decode()[0] if isinstance(msg.decode(), list | tuple) else []
                out.append((msg.headers["task"], list(args)))
    return out
