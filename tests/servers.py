"""Servers the tests start and stop themselves, on free loopback ports.

Each runs in its own process group, so whatever it spawns (Beam's worker pool
starts one SDK worker process per job) stops with it.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def venv_environment(**extra: str) -> dict[str, str]:
    """This interpreter's bin first on PATH: servers that start a bare ``python``
    (Beam's worker pool does) must get the project's venv, not the system's."""
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    return {**os.environ, "PATH": path, **extra}


def wait_for_port(port: int, process: subprocess.Popen, log: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log) as handle:
                raise RuntimeError(f"server exited with {process.returncode}:\n{handle.read()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listened on port {port} within {timeout:g} s (log: {log})")


@contextlib.contextmanager
def server(command: list[str], port: int, log: str, env: dict[str, str] | None = None):
    """Start ``command``, wait until ``port`` accepts connections, yield the process,
    then stop its whole process group (SIGTERM, then SIGKILL for what remains)."""
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env or venv_environment(),
            start_new_session=True,
        )
    try:
        wait_for_port(port, process, log)
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        with contextlib.suppress(ProcessLookupError):  # anything it spawned that outlived it
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
