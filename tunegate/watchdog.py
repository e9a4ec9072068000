"""A container healthcheck that ends a hung process, so that the restart policy starts it again.

Docker marks a container whose healthcheck keeps failing ``unhealthy`` and does nothing else: ``restart:
unless-stopped`` restarts a container only when its process exits. The compose file's healthchecks run this
module, which reports like any healthcheck and, after ``--kill-after`` liveness failures in a row, ends the
process itself::

    python -m tunegate.watchdog --kill-after 3 --grace 60 http http://127.0.0.1:8000/healthz .../readyz
    python -m tunegate.watchdog --kill-after 3 --grace 120 file /tmp/tunegate-worker-alive --max-age 120

Exit 0: healthy; exit 1: unhealthy (Docker's status); one line says why (``docker inspect`` shows it).

- A liveness failure counts: no answer within ``--timeout``, a refused connection, an answer other than 2xx or
  503, an alive file missing or older than ``--max-age``.
- A 503 does not count: the process answered, it is alive but not ready (its database away, a setting
  missing), which a restart would not fix. It exits 1 and resets the count.
- Failures of a process younger than ``--grace`` seconds (still starting) do not count, like Docker's
  ``start_period``.
- The count belongs to one process (its pid and start time, kept in ``--state``): a restarted container
  starts from zero.
- After ``--kill-after`` failures in a row (0: never), the watched process gets SIGKILL. That process is
  each child of the container's init: the compose file sets ``init: true``, so PID 1 is Docker's tini, which
  exits when its child dies, and the restart policy starts the container again. Without an init the app
  itself is PID 1, which the kernel does not let its own container SIGKILL (nor a host's init be signalled
  by a healthcheck run by hand): then nothing is ended, and the message says to run with an init.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

INITS = frozenset(
    {"docker-init", "tini", "dumb-init", "catatonit"}
)  # what Docker's and others' init call PID 1
DEFAULT_STATE = Path("/tmp/tunegate-watchdog.json")


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    counts: bool  # a liveness failure (counted towards --kill-after)
    message: str


def check_http(urls: Sequence[str], timeout_s: float) -> Verdict:
    """Each URL in turn must answer 2xx; the first that does not decides."""
    for url in urls:
        try:
            r = httpx.get(url, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return Verdict(False, True, f"{url}: no answer ({type(exc).__name__}: {exc})")
        if r.status_code == 503:
            return Verdict(False, False, f"{url}: alive, not ready: 503 {r.text[:300]}")
        if not r.is_success:
            return Verdict(False, True, f"{url}: {r.status_code} {r.text[:300]}")
    return Verdict(True, False, "ok: " + " ".join(urls))


def check_file(path: Path, max_age_s: float, *, now: float | None = None) -> Verdict:
    """The alive file a worker touches every heartbeat must exist and be at most ``max_age_s`` old."""
    try:
        age = (now if now is not None else time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return Verdict(False, True, f"{path}: missing (the worker is not running or has not started)")
    if age > max_age_s:
        return Verdict(False, True, f"{path}: {age:.0f} s old, more than {max_age_s:.0f} s")
    return Verdict(True, False, f"ok: {path} {age:.0f} s old")


@dataclass(frozen=True)
class Target:
    pid: int
    start_ticks: int  # /proc/<pid>/stat's starttime: with the pid, names this process among restarts
    killable: bool  # a child of an init (False: PID 1 itself, which is never signalled)


def _stat(proc: Path, pid: int) -> tuple[str, int, int]:
    """(comm, ppid, starttime) from ``/proc/<pid>/stat`` (comm may hold spaces and parentheses)."""
    text = (proc / str(pid) / "stat").read_text()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()  # from field 3 (state) on
    return comm, int(fields[1]), int(fields[19])


def targets(proc: Path = Path("/proc")) -> list[Target]:
    """What to watch and end: every child of PID 1 when PID 1 is an init, else PID 1 itself (not killable)."""
    comm, _, start = _stat(proc, 1)
    if comm not in INITS:
        return [Target(1, start, killable=False)]
    out = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in (1, os.getpid()):
            continue
        try:
            _, ppid, start = _stat(proc, int(entry.name))
        except (FileNotFoundError, ProcessLookupError):  # ended while we looked
            continue
        if ppid == 1:
            out.append(Target(int(entry.name), start, killable=True))
    return sorted(out, key=lambda t: t.pid)


def age_s(proc: Path, target: Target) -> float:
    uptime = float((proc / "uptime").read_text().split()[0])
    return uptime - target.start_ticks / os.sysconf("SC_CLK_TCK")


def _load(state: Path) -> dict[str, int]:
    try:
        data = json.loads(state.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:  # a torn write: start counting afresh, saying so
        sys.stderr.write(f"watchdog: ignoring unreadable state {state}: {exc}\n")
        return {}
    return data if isinstance(data, dict) else {}


def watch(
    verdict: Verdict,
    *,
    kill_after: int,
    grace_s: float,
    state: Path = DEFAULT_STATE,
    proc: Path = Path("/proc"),
) -> tuple[int, str]:
    """Count ``verdict`` for the watched process and end it when due; returns (exit code, message)."""
    if verdict.healthy:
        state.unlink(missing_ok=True)
        return 0, verdict.message
    found = targets(proc)
    if not found:
        return 1, verdict.message + " (no process to watch)"
    main = found[0]
    known = _load(state)
    same = known.get("pid") == main.pid and known.get("start") == main.start_ticks
    failures = int(known.get("failures", 0)) if same else 0
    young = age_s(proc, main) < grace_s
    failures = failures + 1 if verdict.counts and not young else 0
    state.write_text(json.dumps({"pid": main.pid, "start": main.start_ticks, "failures": failures}))
    message = verdict.message
    if young and verdict.counts:
        message += f" (starting: not counted during the first {grace_s:.0f} s)"
    elif verdict.counts:
        message += f" (failure {failures} in a row" + (f" of {kill_after})" if kill_after else ")")
    if kill_after and failures >= kill_after:
        if not main.killable:
            return (
                1,
                message + "; not ended: PID 1 is the app itself (run it with an init: compose init: true)",
            )
        for t in found:
            try:
                os.kill(t.pid, signal.SIGKILL)
            except ProcessLookupError:  # ended on its own meanwhile
                continue
        state.unlink(missing_ok=True)
        message += "; ended (SIGKILL) pid " + ", ".join(str(t.pid) for t in found)
    return 1, message


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunegate.watchdog", description=__doc__.split("\n")[0])
    parser.add_argument("--kill-after", type=int, default=0, help="liveness failures in a row (0: never)")
    parser.add_argument("--grace", type=float, default=60.0, help="seconds a new process may take to start")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per HTTP request")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="where the count is kept")
    parser.add_argument("--proc", type=Path, default=Path("/proc"), help=argparse.SUPPRESS)  # tests
    sub = parser.add_subparsers(dest="kind", required=True)
    http = sub.add_parser("http", help="every URL answers 2xx (503: alive, not ready)")
    http.add_argument("urls", nargs="+")
    alive = sub.add_parser("file", help="a file touched every heartbeat is fresh")
    alive.add_argument("path", type=Path)
    alive.add_argument("--max-age", type=float, default=120.0)
    args = parser.parse_args(argv)
    if args.kind == "http":
        verdict = check_http(args.urls, args.timeout)
    else:
        verdict = check_file(args.path, args.max_age)
    code, message = watch(
        verdict, kill_after=args.kill_after, grace_s=args.grace, state=args.state, proc=args.proc
    )
    sys.stdout.write(message + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
