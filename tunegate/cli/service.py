"""tunegate CLI commands (see tunegate/cli/__init__.py for the map)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    del app
