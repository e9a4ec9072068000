"""Organizations and API keys: create, revoke, list and authenticate. Only a key's sha256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.base import utcnow
from models.tables import ApiKey, Organization
from tunegate.errors import AuthenticationFailed, NotFound

KEY_PREFIX = "tg-"
DISPLAY_CHARS = 10


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
    org = get_or_create_org(session, org_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(org_id=org.id, key_hash=hash_key(key), prefix=key[:DISPLAY_CHARS])
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


def authenticate(session: Session, key: str) -> Organization:
    """The organization of a valid, unrevoked key; ``AuthenticationFailed`` otherwise."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    if row.revoked_at is not None:
        raise AuthenticationFailed("This API key has been revoked.", code="api_key_revoked")
    org = session.get(Organization, row.org_id)
    if org is None:
        raise AuthenticationFailed("Incorrect API key provided.")
    return org
