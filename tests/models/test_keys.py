"""API keys: only a hash is stored; revoked and unknown keys fail authentication."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.keys import authenticate, create_key, hash_key, list_keys, revoke_key
from models.tables import ApiKey
from tunegate.errors import AuthenticationFailed


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
