"""The ``tunegate`` command. Each area registers its commands from its own module.

tunegate db upgrade | keys create/revoke/list          (cli/admin.py)
tunegate models prepare [--aligned] | score            (cli/scoring.py)
tunegate eval | finetune                               (cli/local.py)
tunegate serve | api | worker | demo | follow | reap   (cli/service.py)
"""

from __future__ import annotations

import typer

from cli import admin, local, scoring, service
from tunegate import logs
from tunegate.settings import get_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
for _module in (admin, scoring, local, service):
    _module.register(app)


def main() -> None:
    logs.configure(get_settings())  # JSON lines (TUNEGATE_LOG_FORMAT=text for key=value) on stderr
    app()
