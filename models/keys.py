"""Organizations and API keys: create, revoke, list and authenticate. Only a key's sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.tables import ApiKey, Organization
from tunegate.errors import AuthenticationFailed, NotFound, PermissionDenied

KEY_PREFIX = "tg-"
ADMIN_KEY_PREFIX = "tga-"
DISPLAY_CHARS = 10
ROLE_ORG = "org"
ROLE_ADMIN = "admin"
# Admin keys belong to this organization (it owns no files or jobs: /v1 refuses admin keys).
STAFF_ORG = "provider-staff"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class NewKey:
    key: str  # shown once, never stored
    key_id: str
    org_id: str
    org_name: str


def get_or_create_org(session: Session, name: str) -> Organization:
    org = session.scalar(select(Organization).where(Organization.name == name))
    if org is None:
        org = Organization(name=name, policy={})
        session.add(org)
        session.flush()
    return org


def create_key(session: Session, org_name: str) -> NewKey:
    """Create a key for ``org_name`` (creating the organization when it does not exist yet)."""
    if org_name == STAFF_ORG:
        raise PermissionDenied(f"{STAFF_ORG!r} holds admin keys only: use 'keys create --admin NAME'")
    return _new_key(session, get_or_create_org(session, org_name), KEY_PREFIX, ROLE_ORG, None)


def create_admin_key(session: Session, name: str) -> NewKey:
    """Create a provider-staff key for ``name`` (the person the audit log will name)."""
    if not name.strip():
        raise PermissionDenied("an admin key needs the name of the person who holds it")
    staff = get_or_create_org(session, STAFF_ORG)
    return _new_key(session, staff, ADMIN_KEY_PREFIX, ROLE_ADMIN, name.strip())


def _new_key(session: Session, org: Organization, prefix: str, role: str, name: str | None) -> NewKey:
    key = prefix + secrets.token_urlsafe(32)
    row = ApiKey(org_id=org.id, key_hash=hash_key(key), prefix=key[:DISPLAY_CHARS], role=role, name=name)
    session.add(row)
    session.flush()
    return NewKey(key=key, key_id=row.id, org_id=org.id, org_name=org.name)


def revoke_key(session: Session, key_or_id: str) -> ApiKey:
    """Revoke by key id (``key-…``) or by the key itself; revoking twice is harmless."""
    row = session.get(ApiKey, key_or_id) or session.scalar(
        select(ApiKey).where(ApiKey.key_hash == hash_key(key_or_id))
    )
    if row is None:
        raise NotFound(f"no API key {key_or_id!r}", param="key")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def list_keys(session: Session, org_name: str | None = None) -> list[tuple[ApiKey, Organization]]:
    stmt = select(ApiKey, Organization).join(Organization, ApiKey.org_id == Organization.id)
    if org_name is not None:
        stmt = stmt.where(Organization.name == org_name)
    return [(k, o) for k, o in session.execute(stmt.order_by(ApiKey.created_at)).tuples()]


class _KeyRow(Protocol):
    @property
    def revoked_at(self) -> datetime | None: ...


K = TypeVar("K", bound=_KeyRow)


def _usable(row: K | None) -> K:
    """``row`` when it is a found, unrevoked key; ``AuthenticationFailed`` saying which it is not."""
    if row is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    if row.revoked_at is not None:
        raise AuthenticationFailed("This API key has been revoked.", code="api_key_revoked")
    return row


def _valid_key(session: Session, key: str) -> ApiKey:
    return _usable(session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key))))


@dataclass(frozen=True)
class Admin:
    key_id: str
    name: str


def authenticate_admin(session: Session, key: str) -> Admin:
    """The provider-staff holder of a valid admin key; an organization's key gets ``PermissionDenied``."""
    row = _valid_key(session, key)
    if row.role != ROLE_ADMIN:
        raise PermissionDenied("This page is for the provider's staff: an admin key is required.")
    return Admin(key_id=row.id, name=row.name or row.id)


_ORG_OF_KEY = select(
    ApiKey.revoked_at, ApiKey.role, Organization.id, Organization.name, Organization.policy,
    Organization.rate_limit_per_minute,
).join(Organization, ApiKey.org_id == Organization.id)  # fmt: skip


def authenticate(db: Session | Connection, key: str) -> Organization:
    """The organization of a valid, unrevoked organization key; ``AuthenticationFailed`` otherwise (an
    admin key gets ``PermissionDenied``: it acts in no organization).

    One query. The organization comes back as a detached copy of its row (callers read it, never write it),
    so a Core connection in autocommit mode (``models.db.read_connection``) serves as well as a session."""
    row = _usable(db.execute(_ORG_OF_KEY.where(ApiKey.key_hash == hash_key(key))).first())
    if row.role != ROLE_ORG:
        raise PermissionDenied("Admin keys are for the console and /metrics, not the /v1 API.")
    return Organization(
        id=row.id, name=row.name, policy=row.policy, rate_limit_per_minute=row.rate_limit_per_minute
    )
