"""Administration: ``tunegate db upgrade``, ``tunegate keys create|revoke|list``, ``tunegate orgs show|set``.

Only the CLI can change an organization's policy floor: API callers can tighten it per job, never loosen it.
"""

from __future__ import annotations

import typer

from cli.options import parse_policy

db_app = typer.Typer(no_args_is_help=True, help="Database schema (Alembic migrations).")
keys_app = typer.Typer(no_args_is_help=True, help="Organizations' API keys (only a hash is stored).")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Apply the migrations to the configured database (TUNEGATE_DATABASE_URL or the embedded SQLite)."""
    import migrations
    from tunegate.settings import get_settings

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

    with session_scope() as session:
        row = revoke_key(session, key)
        typer.echo(f"revoked {row.id} ({row.prefix}...)")


@keys_app.command("list")
def keys_list(org: str | None = typer.Option(None, "--org", help="Only this organization.")) -> None:
    """List keys (prefix only) with their organization and state."""
    from models.db import session_scope
    from models.keys import list_keys

    with session_scope() as session:
        for key, organization in list_keys(session, org):
            state = "revoked" if key.revoked_at else "active"
            created = f"{key.created_at:%Y-%m-%d %H:%M}"
            holder = f"admin: {key.name}" if key.role == "admin" else organization.name
            typer.echo(f"{key.id}\t{key.prefix}...\t{holder}\t{state}\t{created}")


orgs_app = typer.Typer(no_args_is_help=True, help="Organizations: safety policy floor and rate limit.")


@orgs_app.command("show")
def orgs_show(org: str = typer.Option(..., "--org", help="Organization name.")) -> None:
    """Print the organization's effective safety policy, storage quota and rate limit as JSON."""
    import json

    from sqlalchemy import select

    from models.db import session_scope
    from models.policy import org_policy, storage_quota
    from models.tables import Organization
    from tunegate.settings import get_settings

    settings = get_settings()
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
            "rate_limit_per_minute": limit,
        }
    typer.echo(json.dumps(out, indent=2))


@orgs_app.command("set")
def orgs_set(
    org: str = typer.Option(..., "--org", help="Organization name (created if new)."),
    policy: list[str] = typer.Option(
        [], "--policy", help="KNOB=VALUE, e.g. mitigation=drop gate_delta=0.03 storage_quota_bytes=1000000000"
    ),
    rate_limit: int | None = typer.Option(None, "--rate-limit", min=0, help="Requests/minute (0: default)."),
) -> None:
    """Set policy knobs (the floor that jobs may only tighten) and the rate limit of an organization."""
    from models.db import session_scope
    from models.keys import get_or_create_org
    from models.policy import KNOBS, STORAGE_QUOTA_KEY, org_policy, storage_quota
    from tunegate.settings import get_settings

    updates = parse_policy(policy, (*KNOBS, STORAGE_QUOTA_KEY))
    with session_scope() as session:
        row = get_or_create_org(session, org)
        merged = {**(row.policy or {}), **updates}
        org_policy(get_settings(), merged)  # validates every knob (InvalidConfig: nothing is stored)
        storage_quota(get_settings(), merged)
        row.policy = merged
        if rate_limit is not None:
            row.rate_limit_per_minute = rate_limit or None
    typer.echo(f"updated {org}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(db_app, name="db")
    app.add_typer(keys_app, name="keys")
    app.add_typer(orgs_app, name="orgs")
