"""``sessiontrace demo``: a small multi-process system on the embedded store.

Three processes: this one plays a user's browser; ``frontdoor`` (ASGI, uvicorn) receives the
request and starts the session; ``ledger`` (WSGI) is the second service it calls. Both services
export to the same SQLite store; when they have shut down (flushing their spans), the session's
path is read back and printed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVICES = ("ledger", "frontdoor")
_STARTUP_SECONDS = 30.0


def run_demo(store_path: Path) -> int:
    """Run the demo against ``store_path``; print ``session.id: <id>`` and the path. Exit code."""
    try:
        import httpx
    except ImportError:
        print("the demo needs its extra: pip install 'sessiontrace[demo]'", file=sys.stderr)
        return 2

    store_path.parent.mkdir(parents=True, exist_ok=True)
    ports = {name: _free_port() for name in SERVICES}
    env = {**os.environ, "SESSIONTRACE_STORE": str(store_path), "SESSIONTRACE_EXPORTER": "store"}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)  # the demo is about the embedded store
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name in SERVICES:
            command = [sys.executable, "-m", f"sessiontrace.demo.{name}", "--port", str(ports[name])]
            if name == "frontdoor":
                command += ["--ledger", f"http://127.0.0.1:{ports['ledger']}"]
            processes[name] = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
        for name in SERVICES:
            _wait_until_up(name, ports[name], processes[name])

        # The "browser": no session of its own, so the front door mints one.
        response = httpx.post(
            f"http://127.0.0.1:{ports['frontdoor']}/claims",
            json={"policy": "P-1042", "amount": "1250.00", "description": "hail damage to roof"},
            timeout=30,
        )
        response.raise_for_status()
        session_id = response.headers["x-session-id"]
    finally:
        _stop(processes)

    from sessiontrace.render.tree import print_path
    from sessiontrace.sources.store import load_session_path
    from sessiontrace.store import SpanStore

    print(f"session.id: {session_id}", flush=True)
    store = SpanStore(store_path)
    try:
        print_path(load_session_path(store, session_id))
    finally:
        store.close()
    print(f"\nstore: {store_path}\nagain: sessiontrace path {session_id}")
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(name: str, port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + _STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
            raise RuntimeError(f"demo service {name} exited with {process.returncode}:\n{stderr}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"demo service {name} did not listen on port {port} within {_STARTUP_SECONDS:.0f} s")


def _stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM, so each service shuts down cleanly and flushes its spans to the store."""
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for name, process in processes.items():
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            print(f"demo service {name} did not stop in time; its last spans may be missing", file=sys.stderr)
