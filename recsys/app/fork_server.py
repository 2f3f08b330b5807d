"""Start a local run's tasks from a process that has already imported their libraries.

KFP's SubprocessRunner starts every task as a fresh ``python3 -m
kfp.dsl.executor_main ...`` (inside the compiled ``sh -ec`` command), and each
spends ~15 s importing TensorFlow, TFT, TFDV and Beam before its work begins: on
the sample that is 40% of a run. Here a server imports them once (with the
task-time environment, ``_KFP_RUNTIME=true``) and forks a child per task; the
compiled command still runs as it is, with ``python3`` replaced by this module's
client (where KFP's runner puts its own interpreter). The client hands the server
its argv, working directory, environment and standard streams (file descriptors
over a Unix socket, as ``multiprocessing``'s forkserver does), waits, and exits
with the task's status, or dies of the task's signal, so KFP, the shell and
``recsys run``'s kill report see what a fresh process would have shown. A client
that goes away (killed, interrupted) takes its task with it.

Python's standard library has the mechanism (``multiprocessing.forkserver``) but
only for functions pickled from a parent Python process, not for a command a
shell runs; that protocol is written here.

    with running() as launcher:  # the server for a block of runs (one import for all)
        ...                      # an orchestrator with launcher.env sends its tasks to it
"""

import atexit
import contextlib
import importlib
import json
import os
import pkgutil
import runpy
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field

# Where a task's client finds the server (set for the orchestrator and its tasks).
SOCKET_ENV = "RECSYS_FORK_SERVER"
# What the server imports before its first fork: every library a task imports, through
# the stage modules (their KFP shims, ``*.component``, are never imported by a task).
PRELOAD_PACKAGES = ("recsys.components",)
PRELOAD_MODULES = ("kfp.dsl.executor", "recsys.core.progress")
# A generous bound on the server's imports (seconds): a hang detector, not a budget.
START_TIMEOUT = 600
SOCKET_DIR_MAX = 90  # characters of the socket directory; a socket path has at most 107
REQUEST_TIMEOUT = 60  # seconds a connected client may take to send its request
_HEADER = struct.Struct("!Q")  # the request body's length
_STATUS = struct.Struct("!i")  # the task's exit code; -N: killed by signal N


def client_command(python: str) -> str:
    """What replaces ``python3`` in a task's compiled command."""
    return f"{python} -m {__name__}"


# ---------------------------------------------------------------- the client


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def client(argv: list[str]) -> int:
    """Run ``python <argv>`` in a child of the server named by SOCKET_ENV, or in this
    interpreter when there is none (a task run outside ``recsys run``)."""
    path = os.environ.get(SOCKET_ENV, "")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
    except OSError:
        conn.close()
        os.execv(sys.executable, [sys.executable, *argv])
    body = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    with conn:
        socket.send_fds(conn, [_HEADER.pack(len(body))], [0, 1, 2])
        conn.sendall(body)
        reply = _read_exactly(conn, _STATUS.size)
    if len(reply) < _STATUS.size:
        print(f"{__name__}: the fork server at {path} went away", file=sys.stderr)
        return 1
    (status,) = _STATUS.unpack(reply)
    if status < 0:  # die of the task's signal: the shell reports 128 + N, as for a process
        with contextlib.suppress(OSError):  # SIGKILL's cannot be set, nor needs it
            signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


# ---------------------------------------------------------------- the server


def preload() -> list[str]:
    """Import what the tasks import; returns the modules that failed (a task that
    needs one fails on its own, with its own message)."""
    failed = []
    names = list(PRELOAD_MODULES)
    for package in PRELOAD_PACKAGES:
        root = importlib.import_module(package)
        names += [
            info.name
            for info in pkgutil.walk_packages(root.__path__, f"{package}.")
            if not info.name.endswith(".component")
        ]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # reported, and the task that needs it fails by itself
            failed.append(f"{name}: {type(error).__name__}: {error}")
    return failed


def _exit_code(error: SystemExit) -> int:
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)
    return 1


def _run_task(request: dict, fds: list[int], inherited: list[int]) -> int:
    """In the forked child: become the process ``python <argv>`` would have been."""
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(number, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd in inherited:
        with contextlib.suppress(OSError):
            os.close(fd)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if "numpy" in sys.modules:  # a fresh process seeds numpy's global generator anew
        sys.modules["numpy"].random.seed()
    argv = request["argv"]
    try:
        if argv[:1] != ["-m"] or len(argv) < 2:  # only `-m module` is served warm
            os.execv(sys.executable, [sys.executable, *argv])
        sys.argv = [argv[1], *argv[2:]]
        sys.path[0] = os.getcwd()  # as `python -m` puts it
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as error:
        code = _exit_code(error)
    except BaseException:
        traceback.print_exc()
        code = 1
    # What the interpreter does at exit: wait for non-daemon threads, run atexit.
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return code


def serve(path: str) -> None:
    """Preload, then fork a task per connection until SIGTERM; report each task's
    status to its client, and kill a task whose client hung up."""
    failed = preload()
    for problem in failed:
        print(f"{__name__}: not preloaded: {problem}", file=sys.stderr, flush=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(64)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # wakes the selector
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, "accept")
    selector.register(wake_read, selectors.EVENT_READ, "signal")
    tasks: dict[int, socket.socket] = {}
    print("ready", flush=True)
    try:
        while not stop:
            for key, _ in selector.select():
                if key.data == "accept":
                    conn, _ = listener.accept()
                    open_fds = [listener.fileno(), wake_read, wake_write, selector.fileno()]
                    pid = _fork_task(conn, open_fds + [c.fileno() for c in tasks.values()])
                    if pid:
                        tasks[pid] = conn
                        selector.register(conn, selectors.EVENT_READ, pid)
                elif key.data == "signal":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_read, 4096)
                    _reap(tasks, selector)
                else:  # the client hung up before its task ended: end the task
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(key.data, signal.SIGKILL)
                    selector.unregister(key.fileobj)
    finally:
        for pid in tasks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fork_task(conn: socket.socket, inherited: list[int]) -> int:
    """Read one request from ``conn`` and fork its task; 0 if the request was broken."""
    conn.settimeout(REQUEST_TIMEOUT)  # a client sends its request at once
    fds = []
    try:
        header, fds, _, _ = socket.recv_fds(conn, _HEADER.size, 3)
        header += _read_exactly(conn, _HEADER.size - len(header))
        body = (
            _read_exactly(conn, _HEADER.unpack(header)[0]) if len(header) == _HEADER.size else b""
        )
        request = json.loads(body) if len(fds) == 3 else None
    except (OSError, ValueError):
        request = None
    conn.settimeout(None)
    if request is None:
        for fd in fds:
            os.close(fd)
        conn.close()
        return 0
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _run_task(request, fds, [*inherited, conn.fileno()])
        finally:
            os._exit(code)
    for fd in fds:
        os.close(fd)
    return pid


def _reap(tasks: dict, selector: selectors.BaseSelector) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = tasks.pop(pid, None)
        if conn is None:
            continue
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(conn)
        with contextlib.suppress(OSError):
            conn.sendall(_STATUS.pack(os.waitstatus_to_exitcode(status)))
        conn.close()


# ------------------------------------------------------ starting and stopping


@dataclass
class Launcher:
    """How a run's tasks start: ``env`` for its orchestrator (empty: KFP's own fresh
    interpreter per task), ``pid`` of the server whose children the tasks are."""

    env: dict = field(default_factory=dict)
    pid: int | None = None


_active: list[Launcher] = []  # the server `running` started, while it runs


@contextlib.contextmanager
def running(enabled: bool = True, log=None):
    """A fork server for the block (or the one already running), as a ``Launcher``;
    with ``enabled`` false, the fresh-interpreter launcher."""
    if not enabled or _active:
        yield _active[-1] if enabled else Launcher()
        return
    directory = tempfile.mkdtemp(prefix="recsys-fork-")
    if len(directory) > SOCKET_DIR_MAX:  # a Unix socket's path has at most 107 bytes
        os.rmdir(directory)
        directory = tempfile.mkdtemp(prefix="recsys-fork-", dir="/tmp")
    path = os.path.join(directory, "socket")
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", __name__, "--serve", path],
        env={**os.environ, "_KFP_RUNTIME": "true"},  # the environment tasks import in
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with selectors.DefaultSelector() as waiting:
            waiting.register(server.stdout, selectors.EVENT_READ)
            ready = waiting.select(START_TIMEOUT) and server.stdout.readline().strip() == "ready"
        if not ready:
            server.kill()
            raise RuntimeError(
                f"the fork server did not start within {START_TIMEOUT}s (exit "
                f"{server.wait()}); run with --fresh-task-processes to start tasks without it"
            )
        if log:
            log(
                f"tasks start from one process that imported their libraries in "
                f"{time.monotonic() - started:.0f}s"
            )
        _active.append(Launcher({SOCKET_ENV: path}, server.pid))
        yield _active[-1]
    finally:
        if _active:
            _active.pop()
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.rmdir(directory)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        sys.exit(client(sys.argv[1:]))
