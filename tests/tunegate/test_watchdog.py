"""Issue 29 (8): an unhealthy container is restarted: its healthcheck (``tunegate.watchdog``) ends the hung
process after N liveness failures in a row, so the container's init exits and the restart policy applies.

Real components: a real HTTP server on 127.0.0.1 (healthy, not ready, dead), a real child process that gets
the SIGKILL. Only ``/proc`` is laid out in a tmp dir: PID 1 there is Docker's init, whose child is that real
process (a test cannot make a process PID 1, and must never signal the machine's own PID 1).
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.server import free_port
from tunegate import watchdog


def stat_line(pid: int, comm: str, ppid: int, start_ticks: int) -> str:
    # fields 5..21 are not read; field 22 is the start time in clock ticks after boot
    return f"{pid} ({comm}) S {ppid} " + " ".join(["0"] * 17) + f" {start_ticks} 0 0\n"


def fake_proc(root: Path, child: int, *, init: str = "docker-init", child_age_s: float = 1000.0) -> Path:
    """PID 1 = ``init`` with one child, the real process ``child``, started ``child_age_s`` ago."""
    ticks = os.sysconf("SC_CLK_TCK")
    uptime = 5000.0
    for pid, comm, ppid, start in (
        (1, init, 0, 1),
        (child, "tunegate (api)", 1, int((uptime - child_age_s) * ticks)),
        (child + 1, "sh", child, int((uptime - 1) * ticks)),  # a grandchild: not ended by the watchdog
    ):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "stat").write_text(stat_line(pid, comm, ppid, start))
    (root / "self").mkdir()
    (root / "uptime").write_text(f"{uptime:.2f} 9999.00\n")
    return root


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b'{"status": "not_ready", "console": "not_configured"}' if self.status == 503 else b"{}"
        self.send_response(self.status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        del format, args


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/healthz", handler
    finally:
        server.shutdown()
        server.server_close()


def run(args: list[str], proc: Path, state: Path) -> int:
    return watchdog.main(["--proc", str(proc), "--state", str(state), "--timeout", "2", *args])


def test_a_process_that_stops_answering_is_killed_after_n_failures(
    tmp_path: Path, victim: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    proc, state = fake_proc(tmp_path / "proc", victim.pid), tmp_path / "state.json"
    dead = f"http://127.0.0.1:{free_port()}/healthz"  # nothing listens: a refused connection
    args = ["--kill-after", "3", "--grace", "60", "http", dead]
    assert run(args, proc, state) == 1 and run(args, proc, state) == 1
    assert victim.poll() is None, "ended before the third failure"
    assert "failure 2 in a row of 3" in capsys.readouterr().out
    assert run(args, proc, state) == 1
    assert victim.wait(timeout=10) == -signal.SIGKILL
    assert f"ended (SIGKILL) pid {victim.pid}" in capsys.readouterr().out
    assert not state.exists()  # the restarted process starts counting from zero


def test_an_answer_resets_the_count(
    tmp_path: Path, victim: subprocess.Popen[bytes], receiver: tuple[str, type[_Handler]]
) -> None:
    url, handler = receiver
    proc, state = fake_proc(tmp_path / "proc", victim.pid), tmp_path / "state.json"
    dead = ["--kill-after", "2", "http", f"http://127.0.0.1:{free_port()}/healthz"]
    assert run(dead, proc, state) == 1
    assert run(["--kill-after", "2", "http", url], proc, state) == 0
    assert run(dead, proc, state) == 1
    assert victim.poll() is None
    handler.status = 500  # an answer, but an error: counts
    assert run(["--kill-after", "2", "http", url], proc, state) == 1
    assert victim.wait(timeout=10) == -signal.SIGKILL


def test_not_ready_is_unhealthy_but_never_restarted(
    tmp_path: Path,
    victim: subprocess.Popen[bytes],
    receiver: tuple[str, type[_Handler]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, handler = receiver
    handler.status = 503  # e.g. /readyz without a console secret: a restart would not fix it
    proc, state = fake_proc(tmp_path / "proc", victim.pid), tmp_path / "state.json"
    for _ in range(5):
        assert run(["--kill-after", "2", "http", url], proc, state) == 1
    assert victim.poll() is None
    out = capsys.readouterr().out
    assert "alive, not ready: 503" in out and "not_configured" in out


def test_failures_while_starting_do_not_count(tmp_path: Path, victim: subprocess.Popen[bytes]) -> None:
    proc, state = fake_proc(tmp_path / "proc", victim.pid, child_age_s=10), tmp_path / "state.json"
    args = ["--kill-after", "1", "--grace", "60", "file", str(tmp_path / "never-touched")]
    for _ in range(3):
        assert run(args, proc, state) == 1
    assert victim.poll() is None


def test_a_stale_alive_file_counts_and_a_fresh_one_is_healthy(
    tmp_path: Path, victim: subprocess.Popen[bytes]
) -> None:
    proc, state = fake_proc(tmp_path / "proc", victim.pid), tmp_path / "state.json"
    alive = tmp_path / "alive"
    alive.touch()
    assert run(["--kill-after", "1", "file", str(alive), "--max-age", "120"], proc, state) == 0
    old = time.time() - 300
    os.utime(alive, (old, old))
    assert run(["--kill-after", "1", "file", str(alive), "--max-age", "120"], proc, state) == 1
    assert victim.wait(timeout=10) == -signal.SIGKILL


def test_another_process_starts_from_zero(tmp_path: Path, victim: subprocess.Popen[bytes]) -> None:
    proc, state = fake_proc(tmp_path / "proc", victim.pid), tmp_path / "state.json"
    state.write_text('{"pid": 4242, "start": 1, "failures": 7}')  # the count of the container's last process
    assert run(["--kill-after", "2", "file", str(tmp_path / "missing")], proc, state) == 1
    assert victim.poll() is None


def test_without_an_init_pid_1_is_never_signalled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "proc"
    (root / "1").mkdir(parents=True)
    (root / "1" / "stat").write_text(stat_line(1, "tunegate", 0, 1))
    (root / "uptime").write_text("5000.00 1.00\n")
    assert watchdog.targets(root) == [watchdog.Target(1, 1, killable=False)]
    state = tmp_path / "state.json"
    assert run(["--kill-after", "1", "file", str(tmp_path / "missing")], root, state) == 1
    assert "not ended: PID 1 is the app itself" in capsys.readouterr().out
