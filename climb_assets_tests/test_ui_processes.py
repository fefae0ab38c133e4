"""`climb mlflow-ui` (and `climb ui`, the same way) is the server itself: stopping its pid stops everything it started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc's parent links)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def restore_default_signals() -> None:  # a background parent may have started us with SIGINT/SIGTERM ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_stopping_mlflow_ui_by_its_pid_stops_the_server(tmp_path):
    port = free_port()
    env = os.environ | {"CLIMB_HOME": str(tmp_path / "climb"), "PYTHONPATH": str(REPO_ROOT),
                        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: starts and stops faster
    command = [sys.executable, "-m", "climb_assets.cli", "mlflow-ui", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, preexec_fn=restore_default_signals,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        while not answers(port):
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow ui did not come up"
            time.sleep(0.5)
        started = descendants(proc.pid)
        assert started, "the server's workers run below the pid `climb mlflow-ui` printed"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # mlflow waits for its workers' graceful shutdown
        deadline = time.monotonic() + 30
        while (answers(port) or any(alive(pid) for pid in started)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not answers(port)
        assert not [pid for pid in started if alive(pid)], "processes outlived the pid they were started under"
    finally:
        for pid in [proc.pid, *descendants(proc.pid), *started]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
