"""What the API does after a crash: sweep storage at startup, then resume processing of uploaded files and
keep sweeping temp uploads while it runs.

A process killed mid-upload can leave a ``.part`` temp file (the body was being staged) or a committed
object whose row was never written; a delete racing a running job can leave an object no row needs once the
job ends. ``sweep_storage`` removes both kinds once older than ``Settings.storage_sweep_grace_s``.

``maintain`` runs in the background of every API process (embedded and distributed alike: the ``.part``
files are on the API's own disk, also with an object store): it processes every file an earlier process
left ``uploaded`` (``api.services.processing.process_pending``, fair across organizations), then removes stale
``.part`` files every ``Settings.storage_sweep_interval_s`` (issue 29: a SIGKILL mid-upload left one until
the next start).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from api.services import crud
from api.services.processing import process_pending
from models.db import session_scope
from tunegate.settings import Settings, get_settings
from tunegate.storage import TMP_DIR, SweepReport, get_storage, sweep_parts

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


def sweep_temp_uploads(settings: Settings | None = None) -> int:
    """Remove the ``.part`` temp uploads older than the grace (local disk and object store alike stage
    uploads in ``files_path/tmp``); how many. No database: cheap enough to run every few minutes."""
    settings = settings or get_settings()
    removed = sweep_parts(settings.files_path / TMP_DIR, time.time() - settings.storage_sweep_grace_s)
    if removed:
        log.info("storage sweep removed %d temp uploads", removed)
    return removed


def resume_processing(stop: threading.Event) -> int:
    """``process_pending`` at startup; a database not reachable or not migrated yet is logged (``/healthz``
    reports it) and the files stay ``uploaded`` for the next start."""
    try:
        n = process_pending(stop)
    except SQLAlchemyError as exc:
        log.warning("could not resume file processing: %s", exc)
        return 0
    if n:
        log.info("resumed processing of %d uploaded files", n)
    return n


async def maintain(stop: threading.Event, settings: Settings | None = None) -> None:
    """The API's background upkeep until cancelled (``stop`` tells the worker thread to end too)."""
    settings = settings or get_settings()
    await run_in_threadpool(resume_processing, stop)
    interval = settings.storage_sweep_interval_s
    while interval > 0 and not stop.is_set():
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(sweep_temp_uploads, settings)
        except OSError as exc:  # e.g. the disk unmounted: logged, and tried again next time
            log.warning("could not sweep temp uploads: %s", exc)
