"""``tunegate webhooks create|list|show|delete|test|rotate-secret|event-types``: an organization's webhook
endpoints, through the openai SDK's own ``client.webhooks`` calls (``cli.remote.connect`` configures it).

Lists print one tab-separated row per endpoint (id, name, URL, event types, created UTC), ``--json`` the
objects. ``create`` and ``rotate-secret`` print the row, then the signing secret on a line of its own: the
service shows it this once (a note on stderr says so).
"""

from __future__ import annotations

import itertools
from typing import Annotated, Any

import typer

from cli import options
from cli.errors import fail
from cli.remote import _when, connect

app = typer.Typer(
    no_args_is_help=True,
    rich_markup_mode=None,
    help="Webhook endpoints that receive your jobs' events (signed; verify with the openai SDK).",
)

DEFAULT_EVENT_TYPES = ("fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled")
SECRET_NOTE = "the signing secret above is shown only once: keep it (verify deliveries with it)"
EndpointId = Annotated[str, typer.Argument(help="Webhook endpoint id (wh_...).")]


def _row(w: Any) -> str:
    return f"{w.id}\t{w.name}\t{w.url}\t{','.join(w.event_types)}\t{_when(w.created_at)}"


def _with_secret(w: Any, as_json: bool) -> None:
    """The endpoint's row (or JSON, which carries ``signing_secret``) and the secret, shown this once."""
    options.emit([w], _row, as_json)
    if not as_json:
        typer.echo(w.signing_secret)
    typer.echo(SECRET_NOTE, err=True)


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or url
    except ValueError:
        return url


@app.command("create")
def create(
    url: Annotated[str, typer.Argument(help="The http(s) URL that receives the events.")],
    name: Annotated[
        str | None, typer.Option(help="A name for the endpoint (default: the URL's host).")
    ] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option(
            "--event-type",
            help="An event type to send (repeatable; default: the job's succeeded, failed and cancelled; "
            "`tunegate webhooks event-types` lists them).",
        ),
    ] = None,
    as_json: options.AsJson = False,
) -> None:
    """Register an endpoint; prints its row and its signing secret (shown only this once)."""
    client, _ = connect()
    made = client.webhooks.create(
        url=url,
        name=name or _host(url),
        event_types=list(event_type or DEFAULT_EVENT_TYPES),  # type: ignore[arg-type]  # ours are extra ones
    )
    _with_secret(made, as_json)


@app.command("list")
def list_(
    limit: Annotated[int, typer.Option(min=1, help="At most this many endpoints.")] = 100,
    as_json: options.AsJson = False,
) -> None:
    """Your endpoints, newest first: id, name, URL, event types, created (UTC)."""
    client, _ = connect()
    options.emit(itertools.islice(client.webhooks.list(limit=min(limit, 100)), limit), _row, as_json)


@app.command("show")
def show(endpoint_id: EndpointId) -> None:
    """The endpoint as JSON (its secret only as a hint)."""
    client, _ = connect()
    typer.echo(client.webhooks.retrieve(endpoint_id).model_dump_json(indent=2))


@app.command("delete")
def delete(endpoint_ids: Annotated[list[str], typer.Argument(help="Webhook endpoint ids (wh_...).")]) -> None:
    """Delete endpoints (and their delivery logs)."""
    client, _ = connect()
    for endpoint_id in endpoint_ids:
        client.webhooks.delete(endpoint_id)
        typer.echo(f"deleted {endpoint_id}")


@app.command("test")
def test(
    endpoint_id: EndpointId,
    event_type: Annotated[
        str | None,
        typer.Option("--event-type", help="The sample event's type (default: the endpoint's first)."),
    ] = None,
    as_json: options.AsJson = False,
) -> None:
    """Send a signed sample event now; prints id, event type and the receiver's HTTP status. A status other
    than 2xx fails the command."""
    client, _ = connect()
    if event_type is None:
        event_type = client.webhooks.retrieve(endpoint_id).event_types[0]
    result = client.webhooks.test(endpoint_id, event_type=event_type)  # type: ignore[arg-type]
    options.emit([result], lambda r: f"{r.webhook_endpoint_id}\t{r.event_type}\t{r.status_code}", as_json)
    if not 200 <= result.status_code < 300:
        fail(f"the endpoint answered HTTP {result.status_code} to the test event")


@app.command("rotate-secret")
def rotate_secret(
    endpoint_id: EndpointId,
    keep_old: Annotated[
        bool, typer.Option("--keep-old", help="Also sign with the old secret for 24 hours, while you switch.")
    ] = False,
    as_json: options.AsJson = False,
) -> None:
    """A new signing secret; prints the row and the secret (shown only this once)."""
    client, _ = connect()
    _with_secret(
        client.webhooks.rotate_secret(endpoint_id, keep_old_secret_active_for_24_hours=keep_old), as_json
    )


@app.command("event-types")
def event_types(as_json: options.AsJson = False) -> None:
    """The event types the service sends, one a line."""
    client, _ = connect()
    options.emit(client.webhooks.event_types.list().data, str, as_json)


def register(root: typer.Typer) -> None:
    """Add ``webhooks`` to the root app."""
    root.add_typer(app, name="webhooks")
