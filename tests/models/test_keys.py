"""API keys: only a hash is stored; revoked and unknown keys fail authentication."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.keys import (
    STAFF_ORG,
    authenticate,
    authenticate_admin,
    create_admin_key,
    create_key,
    hash_key,
    list_keys,
    revoke_key,
)
from models.tables import ApiKey
from tunegate.errors import AuthenticationFailed, PermissionDenied


def test_key_lifecycle(migrated_home: Path) -> None:
    with session_scope() as s:
        new = create_key(s, "acme")
        again = create_key(s, "acme")
    assert new.org_id == again.org_id and new.key != again.key
    with session_scope() as s:
        stored = list(s.scalars(select(ApiKey.key_hash)))
        assert new.key not in stored and hash_key(new.key) in stored
        assert authenticate(s, new.key).name == "acme"
        assert len(list_keys(s, "acme")) == 2
        revoke_key(s, new.key_id)
    with session_scope() as s, pytest.raises(AuthenticationFailed) as info:
        authenticate(s, new.key)
    assert info.value.code == "api_key_revoked"
    with session_scope() as s, pytest.raises(AuthenticationFailed):
        authenticate(s, "tg-unknown")


def test_admin_keys_are_for_staff_only(migrated_home: Path) -> None:
    with session_scope() as s:
        admin = create_admin_key(s, "Dana Moderator")
        org = create_key(s, "acme")
    with session_scope() as s:
        who = authenticate_admin(s, admin.key)
        assert who.name == "Dana Moderator" and who.key_id == admin.key_id
        with pytest.raises(PermissionDenied):  # an admin key acts in no organization
            authenticate(s, admin.key)
        with pytest.raises(PermissionDenied):  # an org key is not staff
            authenticate_admin(s, org.key)
        with pytest.raises(PermissionDenied):
            create_key(s, STAFF_ORG)
        revoke_key(s, admin.key_id)
    with session_scope() as s, pytest.raises(AuthenticationFailed):
        authenticate_admin(s, admin.key)
