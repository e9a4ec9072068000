"""Administration: ``tunegate db upgrade``, ``tunegate keys create|revoke|list``, ``tunegate orgs show|set``.

Only the CLI can change an organization's policy floor: API callers can tighten it per job, never loosen it.

In embedded mode (the SQLite database in the home) the commands that need the tables bring the schema up to
date first (``cli.stack.migrate``: idempotent, under the home's migration lock), so ``tunegate serve &``
followed at once by ``tunegate keys create`` works: whichever migrates first, the other waits for it, then
finds the schema current. With a configured database (distributed mode) migrating stays the operator's step,
``tunegate db upgrade``.
"""

from __future__ import annotations

import typer

from cli.options import AsJson, KnobsCommand, emit, parse_policy

db_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Database schema (Alembic migrations)."
)
keys_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Organizations' API keys (only a hash is stored)."
)


def _wait_line(line: str) -> None:
    typer.echo(line, err=True)


def ensure_schema() -> None:
    """Embedded mode: migrate (waiting, with one line, for a ``serve`` that is migrating); else nothing."""
    from cli.stack import migrate
    from tunegate.settings import get_settings

    settings = get_settings()
    if settings.embedded:
        migrate(settings, on_wait=_wait_line)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply the migrations to the configured database (TUNEGATE_DATABASE_URL or the embedded SQLite)."""
    import migrations
    from cli.stack import migration_lock
    from tunegate.settings import get_settings

    with migration_lock(get_settings(), on_wait=_wait_line):
        migrations.upgrade(revision)
    typer.echo(f"database at revision {revision}: {_safe_url(get_settings().db_url)}")


@db_app.command("downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., help="Target revision ('base' drops everything)."),
) -> None:
    """Revert the migrations down to ``revision``."""
    import migrations

    migrations.downgrade(revision)
    typer.echo(f"database at revision {revision}")


def _safe_url(url: str) -> str:
    head, sep, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if sep else url


@keys_app.command("create")
def keys_create(
    org: str | None = typer.Option(None, "--org", help="Organization name (created if new)."),
    admin: str | None = typer.Option(
        None, "--admin", metavar="NAME", help="A provider-staff key for NAME (the console and /metrics)."
    ),
) -> None:
    """Create an API key and print it once: it cannot be shown again."""
    from models.db import session_scope
    from models.keys import create_admin_key, create_key

    if (org is None) == (admin is None):
        typer.echo("error: give exactly one of --org ORG or --admin NAME", err=True)
        raise typer.Exit(2)
    ensure_schema()
    with session_scope() as session:
        new = create_key(session, org) if org is not None else create_admin_key(session, admin or "")
    who = f"admin: {admin}" if admin is not None else f"organization: {new.org_name} ({new.org_id})"
    typer.echo(who, err=True)
    typer.echo(f"key id: {new.key_id}", err=True)
    typer.echo(new.key)


@keys_app.command("revoke")
def keys_revoke(key: str = typer.Argument(..., help="Key id (key-...) or the key itself.")) -> None:
    """Revoke a key; requests with it answer 401 from now on."""
    from models.db import session_scope
    from models.keys import revoke_key

    ensure_schema()
    with session_scope() as session:
        row = revoke_key(session, key)
        typer.echo(f"revoked {row.id} ({row.prefix}...)")


@keys_app.command("list")
def keys_list(
    org: str | None = typer.Option(None, "--org", help="Only this organization."), as_json: AsJson = False
) -> None:
    """List keys (prefix only) with their organization and state."""
    from models.db import session_scope
    from models.keys import list_keys

    ensure_schema()
    with session_scope() as session:
        rows = [
            {
                "id": key.id,
                "prefix": key.prefix,
                "role": key.role,
                "holder": f"admin: {key.name}" if key.role == "admin" else organization.name,
                "state": "revoked" if key.revoked_at else "active",
                "created_at": f"{key.created_at:%Y-%m-%d %H:%M}",
            }
            for key, organization in list_keys(session, org)
        ]
    emit(
        rows,
        lambda r: "\t".join((r["id"], r["prefix"] + "...", r["holder"], r["state"], r["created_at"])),
        as_json,
    )


orgs_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Organizations: safety policy floor and rate limit."
)


@orgs_app.command("show")
def orgs_show(org: str = typer.Option(..., "--org", help="Organization name.")) -> None:
    """Print the organization's effective safety policy, storage quota and rate limit as JSON."""
    import json

    from sqlalchemy import select

    from models.db import session_scope
    from models.policy import max_active_jobs, org_policy, storage_quota
    from models.tables import Organization
    from tunegate.settings import get_settings

    settings = get_settings()
    ensure_schema()
    with session_scope() as session:
        row = session.scalar(select(Organization).where(Organization.name == org))
        if row is None:
            typer.echo(f"error: no organization named {org!r}", err=True)
            raise typer.Exit(code=1)
        limit = row.rate_limit_per_minute or settings.rate_limit_per_minute
        out = {
            "id": row.id,
            "name": row.name,
            "policy": org_policy(settings, row.policy),
            "storage_quota_bytes": storage_quota(settings, row.policy),
            "max_active_jobs": max_active_jobs(settings, row.policy),
            "rate_limit_per_minute": limit,
        }
    typer.echo(json.dumps(out, indent=2))


@orgs_app.command("set", cls=KnobsCommand)
def orgs_set(
    org: str = typer.Option(..., "--org", help="Organization name (created if new)."),
    policy: list[str] = typer.Option(
        [],
        "--policy",
        metavar="KNOB=VALUE",
        help="A safety knob (below) or a limit (storage_quota_bytes, max_active_jobs), e.g. mitigation=drop "
        "gate_delta=0.03 storage_quota_bytes=1000000000 (repeatable).",
    ),
    rate_limit: int | None = typer.Option(None, "--rate-limit", min=0, help="Requests/minute (0: default)."),
) -> None:
    """Set policy knobs (the floor that jobs may only tighten) and the rate limit of an organization."""
    from models.db import session_scope
    from models.keys import get_or_create_org
    from models.policy import KNOBS, LIMIT_KEYS, max_active_jobs, org_policy, storage_quota
    from tunegate.settings import get_settings

    updates = parse_policy(policy, (*KNOBS, *LIMIT_KEYS))
    ensure_schema()
    with session_scope() as session:
        row = get_or_create_org(session, org)
        merged = {**(row.policy or {}), **updates}
        org_policy(get_settings(), merged)  # validates every knob (InvalidConfig: nothing is stored)
        storage_quota(get_settings(), merged)
        max_active_jobs(get_settings(), merged)
        row.policy = merged
        if rate_limit is not None:
            row.rate_limit_per_minute = rate_limit or None
    typer.echo(f"updated {org}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(db_app, name="db")
    app.add_typer(keys_app, name="keys")
    app.add_typer(orgs_app, name="orgs")
