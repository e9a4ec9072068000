"""Prometheus exposition for ``GET /metrics``: request timing (a middleware) and what is read at scrape time.

Counters and histograms of every process come from the multiprocess directory (``tunegate.metrics``); the
state of the service is read from the database and the broker when scraped (``StateCollector``), so it is
right whichever API or worker process changed it:

- ``tunegate_jobs{status}``: jobs by status;
- ``tunegate_failed_jobs{code}``: failed jobs by error code;
- ``tunegate_gate_decisions{code}``: jobs the gate decided on, ``released`` or the code that blocked them;
- ``tunegate_queue_messages{queue}``: messages waiting in each Celery queue (Redis list or the embedded
  broker's table);
- ``tunegate_collector_up{source}``: 0 when the database or the broker could not be read for this scrape.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator

from kombu.exceptions import ChannelError
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from models.db import new_session
from models.jobs import JobStatus
from models.tables import Job
from tunegate import metrics
from tunegate.errors import GATE_CODES
from tunegate.queue import QUEUES, celery_app

log = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"  # the route label of a path no route serves (bounded cardinality)


def route_template(scope: Scope) -> str:
    """The template of the route serving this request (``/v1/files/{file_id}``), never the raw path.

    Set by the router once it has routed; a request refused before routing (the abuse guard, the body
    limit) is matched here against the application's routes.
    """
    route = scope.get("route")
    if route is None:
        partial = None
        for candidate in getattr(getattr(scope.get("app"), "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate
        route = route or partial
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class MetricsMiddleware:
    """Observes every HTTP request's duration by route template, method and status."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # the application failed before answering

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            metrics.observe_request(
                route_template(scope), scope["method"], status, time.perf_counter() - start
            )


class StateCollector(Collector):
    """Jobs, gate decisions and queue depth, read from the database and the broker at each scrape."""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "tunegate_collector_up", "1 when this source could be read for this scrape.", labels=["source"]
        )
        for source, read in (("database", self._database), ("broker", self._broker)):
            try:
                families = list(read())
            except Exception:  # a source that is down must not fail the scrape: its up gauge says so
                log.warning("metrics: could not read the %s", source, exc_info=True)
                up.add_metric([source], 0)
            else:
                up.add_metric([source], 1)
                yield from families
        yield up

    def _database(self) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("tunegate_jobs", "Fine-tuning jobs by status.", labels=["status"])
        failed = GaugeMetricFamily("tunegate_failed_jobs", "Failed jobs by error code.", labels=["code"])
        gate = GaugeMetricFamily(
            "tunegate_gate_decisions",
            "Jobs the safety gate decided on: code 'released', or the code that blocked the job.",
            labels=["code"],
        )
        code = Job.error["code"].as_string()
        with new_session(readonly=True) as session:
            by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            failures = session.execute(
                select(code, func.count()).where(Job.status == JobStatus.FAILED).group_by(code)
            ).all()
            blocked = session.execute(
                select(code, func.count())
                .where(Job.status == JobStatus.FAILED, code.in_(GATE_CODES))
                .group_by(code)
            ).all()
            released = session.scalar(select(func.count()).where(Job.released.is_(True)))
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status.value, 0))
        for c, n in failures:
            failed.add_metric([c or "unknown"], n)
        gate.add_metric(["released"], released or 0)
        for c, n in blocked:
            gate.add_metric([c or "unknown"], n)
        return (jobs, failed, gate)

    def _broker(self) -> Iterable[Metric]:
        depth = GaugeMetricFamily(
            "tunegate_queue_messages", "Task messages waiting in a Celery queue.", labels=["queue"]
        )
        with celery_app().connection_for_read() as conn:
            channel = conn.default_channel
            for queue in QUEUES:
                try:
                    n = channel.queue_declare(queue=queue, passive=True).message_count
                except ChannelError:  # never declared (nothing sent yet): empty
                    n = 0
                depth.add_metric([queue], n)
        return (depth,)


def exposition() -> bytes:
    """The text exposition of every process's counters and the state read now."""
    registry = CollectorRegistry()
    path = metrics.directory()
    if path is not None:
        MultiProcessCollector(registry, path=str(path))
    registry.register(StateCollector())
    return generate_latest(registry)
