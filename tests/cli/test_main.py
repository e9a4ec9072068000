"""The root command: services log at INFO; a command run at a terminal logs only warnings unless told."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli import _log_settings
from tunegate.settings import reset_settings


def test_terminal_commands_log_warnings_services_info(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TUNEGATE_LOG_LEVEL", raising=False)
    reset_settings()
    assert _log_settings(["models", "prepare", "--aligned"]).log_level == "WARNING"
    assert _log_settings(["--debug", "demo"]).log_level == "WARNING"
    assert _log_settings(["api", "--port", "8000"]).log_level == "INFO"
    assert _log_settings(["worker"]).log_level == "INFO"


def test_an_explicit_level_wins(tunegate_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEGATE_LOG_LEVEL", "DEBUG")
    reset_settings()
    assert _log_settings(["demo"]).log_level == "DEBUG"
