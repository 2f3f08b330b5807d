"""The fork server local runs start their tasks from (``recsys.app.fork_server``): a
task started through it is the process ``python -m module`` would have been (argv,
working directory, environment, streams, exit status, death by signal), and a
task whose client goes away goes with it. The whole pipeline through it: the
end-to-end tests (test_e2e.py, test_s3_e2e.py)."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from recsys.app import fork_server

TASK = """\
import os, sys
print(os.environ["TASK_SETTING"], os.getcwd(), sys.argv[1:], sys.stdin.read())
print("to stderr", file=sys.stderr)
import numpy as np
print(np.random.random())
sys.exit(int(sys.argv[1]))
"""


@pytest.fixture(scope="session")
def launcher():
    with fork_server.running() as started:
        yield started


def through(launcher, module: str, *args, cwd, stdin="", environment=None, **popen):
    command = fork_server.client_command(sys.executable).split() + ["-m", module, *args]
    env = {**os.environ, **launcher.env, "TASK_SETTING": "x", **(environment or {})}
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_a_task_gets_its_arguments_directory_environment_and_streams(launcher, tmp_path):
    (tmp_path / "task_module.py").write_text(TASK)
    done = through(launcher, "task_module", "3", "b", cwd=tmp_path, stdin="in")
    assert done.returncode == 3, done.stderr
    first, second = done.stdout.splitlines()
    assert first == f"x {tmp_path} ['3', 'b'] in"
    assert "to stderr" in done.stderr
    # numpy's global generator is seeded anew per task, as in a fresh process
    again = through(launcher, "task_module", "0", cwd=tmp_path)
    assert again.returncode == 0 and again.stdout.splitlines()[1] != second


def test_the_task_runs_in_a_child_of_the_server_not_a_new_interpreter(launcher, tmp_path):
    (tmp_path / "parent_module.py").write_text(
        "import os, sys; print(os.getppid()); print('tensorflow' in sys.modules)"
    )
    done = through(launcher, "parent_module", cwd=tmp_path)
    parent, preloaded = done.stdout.split()
    assert int(parent) == launcher.pid and preloaded == "True"


def test_a_task_killed_by_a_signal_kills_its_client_with_it(launcher, tmp_path):
    """What the kernel's OOM killer does to a task reaches the shell as it would."""
    (tmp_path / "killed_module.py").write_text("import os, signal; os.kill(os.getpid(), 9)")
    done = through(launcher, "killed_module", cwd=tmp_path)
    assert done.returncode == -signal.SIGKILL


def test_an_exception_is_printed_and_exits_1(launcher, tmp_path):
    (tmp_path / "failing_module.py").write_text("raise ValueError('bad input in row 7')")
    done = through(launcher, "failing_module", cwd=tmp_path)
    assert done.returncode == 1
    assert "ValueError: bad input in row 7" in done.stderr


def test_a_client_that_goes_away_takes_its_task(launcher, tmp_path):
    (tmp_path / "slow_module.py").write_text(
        "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    )
    command = fork_server.client_command(sys.executable).split() + ["-m", "slow_module"]
    client = subprocess.Popen(
        command, cwd=tmp_path, env={**os.environ, **launcher.env}, stdout=subprocess.PIPE, text=True
    )
    task = int(client.stdout.readline())
    assert psutil.pid_exists(task)
    client.send_signal(signal.SIGKILL)
    client.wait(timeout=60)
    deadline = time.monotonic() + 60  # a hang detector: the server reacts at once
    while psutil.pid_exists(task) and psutil.Process(task).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, "the task outlived its client"
        time.sleep(0.1)


def test_without_a_server_the_client_runs_a_fresh_interpreter(tmp_path):
    (tmp_path / "fresh_module.py").write_text("import sys; print('tensorflow' in sys.modules)")
    command = fork_server.client_command(sys.executable).split() + ["-m", "fresh_module"]
    env = {k: v for k, v in os.environ.items() if k != fork_server.SOCKET_ENV}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "False"


def test_stopping_the_server_removes_its_socket(launcher, monkeypatch):
    # a `running` inside another shares its server
    with fork_server.running() as inner:
        assert inner.pid == launcher.pid
    assert psutil.pid_exists(launcher.pid)
    monkeypatch.setattr(fork_server, "_active", [])  # as if none were running
    with fork_server.running() as started:
        path = started.env[fork_server.SOCKET_ENV]
        assert os.path.exists(path) and started.pid != launcher.pid
    assert not os.path.exists(path) and not psutil.pid_exists(started.pid)
