"""``tunegate serve``'s lifecycle with real processes (issue 28, "The first hour"): started in the background
and followed at once by ``keys create`` (the README's second path), stopped by SIGTERM (no child left
holding the port), refused on a busy port with one line, and the migration lock that lets an admin command
wait for a migrating ``serve``."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from cli.stack import MIGRATE_LOCK, _spawn, stop_all
from tests.api.server import free_port, wait_for

SERVING = re.compile(r"tunegate is serving at (http://\S+)/v1")


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without any TUNEGATE_* variable, with the venv's ``tunegate`` on PATH, a fresh home
    (embedded mode) and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEGATE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, "TUNEGATE_HOME": str(home), **extra}


def tunegate(*args: str) -> list[str]:
    return [sys.executable, "-c", "import cli; cli.main()", *args]


def port_free(port: int) -> bool:
    """``port`` can be bound on 127.0.0.1 as uvicorn binds it."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def presence_rows(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return sorted(q for (q,) in conn.execute("SELECT queues FROM worker_presence"))


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path, int, dict[str, str]]]:
    """``tunegate serve`` started in the background on a fresh home, as the README does; killed (with what
    it started) at the end whatever the test did."""
    home, port = tmp_path / "home", free_port()
    env = cli_env(home, TUNEGATE_API_PORT=str(port))
    out = (tmp_path / "serve.out").open("w")
    proc = subprocess.Popen(tunegate("serve"), env=env, stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        yield proc, tmp_path / "serve.out", port, env
    finally:
        family = psutil.Process(proc.pid).children(recursive=True) if alive(proc.pid) else []
        for p in [proc, *family]:
            if alive(p.pid):
                p.kill()
        proc.wait(timeout=30)
        out.close()


def test_keys_create_right_after_serve_in_the_background_then_sigterm_stops_everything(
    serve: tuple[subprocess.Popen[str], Path, int, dict[str, str]],
) -> None:
    proc, out, port, env = serve
    # `tunegate serve & KEY=$(tunegate keys create --org acme)`: no wait in between
    created = subprocess.run(
        tunegate("keys", "create", "--org", "acme"), env=env, capture_output=True, text=True, timeout=120
    )
    assert created.returncode == 0, created.stderr
    assert re.fullmatch(r"tg-\S+\n", created.stdout), (
        created.stdout
    )  # the key alone on stdout: $(...) takes it

    wait_for(lambda: SERVING.search(out.read_text()) is not None or proc.poll() is not None, "serving", 120)
    assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    base = SERVING.search(out.read_text())
    assert base is not None and base.group(1) == f"http://127.0.0.1:{port}"
    import httpx

    assert (
        httpx.get(
            f"http://127.0.0.1:{port}/v1/models",
            headers={"Authorization": "Bearer " + created.stdout.strip()},
        ).status_code
        == 200
    )

    # each worker keeps its presence row (models/presence.py): the queues served
    db = Path(env["TUNEGATE_HOME"]) / "tunegate.db"
    wait_for(lambda: presence_rows(db) == ["cpu,gpu", "short"], "both workers' presence rows", 90)

    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 3, children  # the API, the gpu,cpu worker, the short worker
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (any(alive(c.pid) for c in children) or not port_free(port)):
        time.sleep(0.1)
    left = [f"{c.pid}" for c in children if alive(c.pid)]
    assert not left, f"children still running 10s after serve's SIGTERM: {left}"
    assert port_free(port), f"port {port} still held 10s after serve's SIGTERM"
    assert "stopping" in out.read_text()
    assert presence_rows(db) == []  # the workers stopped in order: each removed its row
    # a home where the default model is not built: serve said once what builds it
    stderr = proc.stderr.read() if proc.stderr else ""
    notes = [line for line in stderr.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "`tunegate models prepare --aligned`" in notes[0], stderr


def test_serve_on_a_busy_port_fails_with_one_line_before_starting_anything(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        res = subprocess.run(
            tunegate("serve", "--port", str(port)),
            env=cli_env(tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert res.returncode == 1
    assert res.stdout == ""  # never "tunegate is serving at ..."
    assert res.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use (another tunegate serve?): stop what holds it, "
        "or choose another port with --port or TUNEGATE_API_PORT"
    ]
    assert not (tmp_path / "home" / "tunegate.db").exists()  # nothing was started, not even the migrations


def test_serve_detach_on_a_busy_port_fails_in_the_foreground(tmp_path: Path) -> None:
    """``serve --detach`` checks the port before it detaches: the one line is here, not in a log."""
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        res = subprocess.run(
            tunegate("serve", "--detach", "--port", str(port)),
            env=cli_env(tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert res.returncode == 1 and res.stdout == ""
    assert (
        len(res.stderr.strip().splitlines()) == 1
        and f"port {port} on 127.0.0.1 is already in use" in res.stderr
    )


def test_an_admin_command_waits_for_a_running_migration_with_one_line(tmp_path: Path) -> None:
    """Another process holds the home's migration lock (a ``serve`` migrating): ``keys create`` says it
    waits, then migrates (nothing left to do for a real serve) and creates the key."""
    home = tmp_path / "home"
    home.mkdir()
    err = tmp_path / "keys.err"
    with (home / MIGRATE_LOCK).open("a") as lock, err.open("w") as err_out:
        fcntl.flock(lock, fcntl.LOCK_EX)
        waiting = subprocess.Popen(
            tunegate("keys", "create", "--org", "acme"),
            env=cli_env(home),
            stdout=subprocess.PIPE,
            stderr=err_out,
            text=True,
        )
        wait_for(lambda: "waiting" in err.read_text() or waiting.poll() is not None, "the waiting line", 60)
        time.sleep(1)
        assert waiting.poll() is None, err.read_text()  # still waiting while the lock is held
        fcntl.flock(lock, fcntl.LOCK_UN)
        stdout, _ = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err.read_text()
    assert stdout.startswith("tg-")
    assert err.read_text().splitlines()[0] == (
        "waiting (up to 60s) for another tunegate process (tunegate serve?) to finish migrating the database"
    )


def test_with_a_configured_database_migrating_stays_the_operators_step(tmp_path: Path) -> None:
    """Distributed mode (TUNEGATE_DATABASE_URL set): ``keys create`` does not migrate, it names the step."""
    env = cli_env(tmp_path / "home", TUNEGATE_DATABASE_URL=f"sqlite:///{tmp_path / 'other.db'}")
    res = subprocess.run(
        tunegate("keys", "create", "--org", "acme"), env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 1 and res.stdout == ""
    assert (
        res.stderr.strip()
        == "error: the database has no tunegate tables yet: run `tunegate db upgrade` first"
    )


def test_a_child_stops_when_its_parent_is_killed(tmp_path: Path) -> None:
    """SIGKILL leaves a parent no chance to stop its children: the stack's children get SIGTERM from the
    kernel then (Linux's parent-death signal), so a killed ``serve`` leaves nothing holding the port."""
    if sys.platform != "linux":
        pytest.skip("the parent-death signal is Linux's")
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from cli.stack import _spawn; "
            f"c = _spawn([sys.executable, '-c', 'import time; time.sleep(600)'], None); "
            f"open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(600)",
        ]
    )
    try:
        wait_for(lambda: pid_file.is_file() and pid_file.read_text() != "", "the child", 60)
        child = int(pid_file.read_text())
        assert alive(child)
        parent.kill()
        parent.wait(timeout=10)
        wait_for(lambda: not alive(child), "the orphaned child to stop", 10)
    finally:
        if parent.poll() is None:
            parent.kill()


def test_stop_all_stops_children_together_within_the_grace(tmp_path: Path) -> None:
    """One child ignores SIGTERM: it is killed after the grace, and the others were stopped at once (the
    grace is shared, not waited once per child)."""
    stubborn = _spawn(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)",
        ],
        None,
    )
    plain = [_spawn([sys.executable, "-c", "import time; time.sleep(600)"], None) for _ in range(2)]
    time.sleep(1)  # the stubborn one has set its handler
    start = time.monotonic()
    stop_all([stubborn, *plain], grace_s=2)
    took = time.monotonic() - start
    assert all(p.returncode is not None for p in [stubborn, *plain])
    assert stubborn.returncode == -signal.SIGKILL and all(p.returncode == -signal.SIGTERM for p in plain)
    assert took < 12, f"stop_all took {took:.1f}s for a 2s grace"
