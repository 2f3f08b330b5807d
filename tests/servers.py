"""Servers the tests (and benches) start and stop themselves, on free loopback ports.

Each runs in its own process group, so whatever it spawns (Beam's worker pool
starts one SDK worker process per job) stops with it.
"""

import contextlib
import json
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


def wait_for_port(port: int, process: subprocess.Popen, log: str, timeout: float = 300) -> None:
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


@contextlib.contextmanager
def beam_portable_runner(directory: str):
    """Beam's job service and an external SDK worker pool; yields the Beam arguments
    (a JSON list, as KFP passes them) that run a pipeline there. Logs in ``directory``."""
    job_port, pool_port = free_port(), free_port()
    job_service = [
        sys.executable,
        "-m",
        "apache_beam.runners.portability.local_job_service_main",
        f"--port={job_port}",
        f"--staging_dir={os.path.join(directory, 'staging')}",
    ]
    pool = [
        sys.executable,
        "-m",
        "apache_beam.runners.worker.worker_pool_main",
        f"--service_port={pool_port}",
    ]
    with (
        server(job_service, job_port, os.path.join(directory, "job_service.log")),
        server(pool, pool_port, os.path.join(directory, "worker_pool.log")),
    ):
        yield json.dumps(
            [
                "--runner=PortableRunner",
                f"--job_endpoint=localhost:{job_port}",
                "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{pool_port}",
                # Also bounds the job's state and message streams: a job longer than the
                # default 60 s would fail on the client while the service reports DONE.
                "--job_server_timeout=900",
            ]
        )


REDIS_SERVER = "redis-server"


@contextlib.contextmanager
def redis_server(directory: str):
    """Redis on a free loopback port with nothing persisted; yields its URL. Redis
    is Debian's ``redis-server`` (`make test` installs it when missing)."""
    import shutil

    binary = shutil.which(REDIS_SERVER)
    if binary is None:
        raise RuntimeError(
            "redis-server is not installed: `make test` installs Debian's package when "
            "run as root; otherwise: sudo apt-get install redis-server"
        )
    port = free_port()
    command = [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--save", "",
        "--appendonly", "no",
        "--dir", directory,
    ]  # fmt: skip
    with server(command, port, os.path.join(directory, "redis.log")) as process:
        yield f"redis://127.0.0.1:{port}/0", process
