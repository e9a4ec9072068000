"""What the API does at startup after a crash: sweep storage, then resume processing of uploaded files.

A process killed mid-upload can leave a ``.part`` temp file (the body was being staged) or a committed
object whose row was never written; a delete racing a running job can leave an object no row needs once the
job ends. ``sweep_storage`` removes both kinds once older than ``Settings.storage_sweep_grace_s``.
"""

from __future__ import annotations

import logging

from api import crud
from models.db import session_scope
from tunegate.settings import Settings, get_settings
from tunegate.storage import SweepReport, get_storage

log = logging.getLogger(__name__)


def sweep_storage(settings: Settings | None = None) -> SweepReport:
    settings = settings or get_settings()
    with session_scope() as session:
        live = crud.live_storage_keys(session)
    report = get_storage(settings).sweep(live, older_than_s=settings.storage_sweep_grace_s)
    if report.parts_removed or report.orphans_removed:
        log.info(
            "storage sweep removed %d temp uploads and %d orphaned objects",
            report.parts_removed,
            report.orphans_removed,
        )
    return report
