"""Signed console tokens: tampering, another secret and age all refuse; the home secret is made once."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tunegate.errors import InvalidConfig
from tunegate.settings import Settings
from tunegate.signing import console_secret, sign, verify

SECRET = b"s3cret"


def test_a_token_round_trips_until_it_expires() -> None:
    token = sign({"key": "key-1", "csrf": "abc"}, SECRET, now=1000)
    assert verify(token, SECRET, max_age_s=60, now=1030) == {"key": "key-1", "csrf": "abc", "iat": 1000}
    assert verify(token, SECRET, max_age_s=60, now=1061) is None
    assert verify(token, SECRET, max_age_s=60, now=999) is None  # issued in the future


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace(".", "x.", 1),  # payload changed
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # signature changed
        lambda t: t.split(".")[0],  # no signature
        lambda t: "%%%." + t.split(".")[1],  # not base64
        lambda t: "",
    ],
)
def test_tampered_tokens_are_refused(mangle: object) -> None:
    token = sign({"key": "key-1"}, SECRET, now=1000)
    assert callable(mangle)
    assert verify(mangle(token), SECRET, max_age_s=60, now=1001) is None


def test_another_secret_is_refused() -> None:
    token = sign({"key": "key-1"}, SECRET, now=1000)
    assert verify(token, b"other", max_age_s=60, now=1001) is None


def test_embedded_secret_is_generated_once_private(tmp_path: Path) -> None:
    # explicit: the environment of other tests (a server fixture's database URL) must not leak in
    settings = Settings(home=tmp_path / "home", database_url=None, broker_url=None, console_secret=None)
    first = console_secret(settings)
    assert len(first) >= 32 and console_secret(settings) == first
    path = tmp_path / "home" / "console_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert console_secret(Settings(home=tmp_path / "home", console_secret="set")) == b"set"


def test_distributed_mode_needs_the_setting(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url="postgresql+psycopg://x@127.0.0.1/y")
    with pytest.raises(InvalidConfig, match="TUNEGATE_CONSOLE_SECRET"):
        console_secret(settings)
