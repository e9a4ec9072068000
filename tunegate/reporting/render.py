"""Jinja2 rendering: one environment over the package's templates, autoescaped, with plain-word filters."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NotRequired, TypedDict, cast

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from tunegate.jsontypes import JsonObject, JsonValue
from tunegate.report import SafetyReport
from tunegate.reporting.view import report_view


def when(value: Any) -> str:
    """A timestamp (datetime or unix seconds) as 'YYYY-MM-DD HH:MM UTC'; '' for none."""
    if value is None or value == "":
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value)


def yesno(value: Any) -> str:
    """Booleans in words (a report never shows Python's True/False)."""
    return "yes" if value else "no"


def plain(value: Any) -> str:
    """A policy or metric value for reading: booleans in words, fractions to three places."""
    if isinstance(value, bool):
        return yesno(value)
    if isinstance(value, float):
        return f"{value:.3g}"
    if value is None:
        return "n/a"
    if isinstance(value, list | tuple):
        return ", ".join(plain(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k} {plain(v)}" for k, v in value.items()) or "none"
    return str(value)


class TimelineEvent(TypedDict):
    """One of the job's events on the report's timeline."""

    at: datetime
    stage: str | None
    level: str
    message: str


class AuditLine(TypedDict):
    """One moderator action, as the report's audit section and the console's pages show it."""

    id: str
    at: datetime
    who: str
    action: str
    reason: str
    job_id: str | None
    details: JsonObject
    change: NotRequired[str]  # the change in words (the console's organization-wide entries)


class JobContext(TypedDict, total=False):
    """What the report's header, the job's details, the timeline and the banners read of the job (any of it
    may be left out: ``job_fields`` makes it None, or empty for ``policy`` and ``events``)."""

    id: str | None
    org: str | None
    org_id: str | None  # the console's link to the organization's audit entries
    model: str | None
    status: str | None
    fine_tuned_model: str | None
    training_file: str | None
    training_filename: str | None
    n_examples: int | None
    validation_file: str | None
    created_at: datetime | None
    finished_at: datetime | None
    revoked_at: datetime | None
    override: JsonValue  # the gate's code a moderator's override released the job over
    policy: JsonObject  # the job's effective policy
    events: list[TimelineEvent]


def job_fields(job: JobContext | None) -> JobContext | None:
    """``job`` with every field the templates read present (None, or empty for ``policy`` and ``events``)."""
    if job is None:
        return None
    empty: dict[str, object] = {**dict.fromkeys(JobContext.__annotations__), "policy": {}, "events": []}
    return cast(JobContext, {**empty, **job})  # the TypedDict's own keys: declared once, above


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("tunegate.reporting", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, yesno=yesno, plain=plain, svg=Markup)
    return env


def render_report(
    report: SafetyReport,
    *,
    job: JobContext | None = None,
    audit: Sequence[AuditLine] = (),
    generated_at: datetime | None = None,
) -> str:
    """The full report page. It opens with a header (``_report_header.html``): the job, its organization,
    its model and the time (the job's dates and ``generated_at``, now by default). ``job`` (id, org, model,
    files, dates, policy, events ...) fills the header, the job's details and the timeline; without it (the
    copy the gate writes beside report.json) the header says what this copy does not record. ``audit``
    adds the moderators' actions."""
    job = job_fields(job)
    share = ((job or {}).get("policy") or {}).get("mitigate_top_fraction")  # the job's policy (JSON)
    return (
        environment()
        .get_template("report.html")
        .render(
            view=report_view(report, share if isinstance(share, int | float) else None),
            job=job,
            audit=list(audit),
            generated_at=generated_at or datetime.now(UTC),
        )
    )


def render_page(template: str, **context: Any) -> str:
    """A console page (``console/<name>.html``); a job page passes ``view`` from ``report_view``."""
    return environment().get_template(template).render(**context)
