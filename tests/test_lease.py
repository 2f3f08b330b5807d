"""The writer lease, on a local root and on a real S3 API server: one holder at a
time, a held lease named in the error, a dead or expired holder taken over, and a
writer that lost its lease stopped before it commits."""

import json
import multiprocessing
import os
import socket
import threading
import time

import pytest

from recsys.core import storage
from recsys.core.lease import LEASE_DIR, Lease, LeaseHeld, LeaseLost, lease


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("s3_root")


def _write_lease(root: str, number: int, **holder) -> None:
    body = {"owner": "run-a", "token": "t", "host": "elsewhere", "pid": 1, **holder}
    storage.write_text(storage.join(root, LEASE_DIR, f"{number:012d}.json"), json.dumps(body))


def test_one_holder_at_a_time(root):
    inside, overlaps = [], []

    def writer():
        with lease(root, "writer", wait_seconds=120):
            inside.append(1)
            overlaps.append(len(inside))
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(overlaps) == 6 and max(overlaps) == 1
    numbers = storage.listdir(storage.join(root, LEASE_DIR))
    assert numbers == [f"{n:012d}.json" for n in range(1, 7)]  # one each, never reused
    for name in numbers:
        assert json.loads(storage.read_text(storage.join(root, LEASE_DIR, name)))["released"]


def test_a_held_lease_is_named_when_the_wait_ends(root):
    _write_lease(root, 3, expires=time.time() + 300)
    with pytest.raises(LeaseHeld) as error, lease(root, "push", wait_seconds=0.5):
        pass
    message = str(error.value)
    assert "being written by run-a (host elsewhere, pid 1)" in message
    assert "lease expires at" in message


def test_an_expired_lease_is_taken_over(root):
    _write_lease(root, 3, expires=time.time() - 1)
    _write_lease(root, 2, expires=time.time() - 7200)  # ended long ago: deleted
    with lease(root, "push", wait_seconds=0) as held:
        assert held.number == 4 and held.holds()
        names = storage.listdir(storage.join(root, LEASE_DIR))
        assert names == [f"{3:012d}.json", f"{4:012d}.json"]


def test_a_dead_process_on_this_machine_releases_at_once(root):
    child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
    _write_lease(root, 1, host=socket.gethostname(), pid=child.pid, expires=time.time() + 300)
    with lease(root, "push", wait_seconds=0) as held:
        assert held.number == 2


def test_a_writer_that_lost_its_lease_stops_before_committing(root):
    stalled = Lease(root, "stalled run", ttl_seconds=300)
    assert stalled.try_acquire() is None
    stalled._stop.set()  # stalled: no renewals; another writer takes over after expiry
    _write_lease(root, stalled.number + 1, expires=time.time() + 300)
    with pytest.raises(LeaseLost, match="another writer took it before switching"):
        stalled.check("switching models.config")
    taken_over = storage.join(root, LEASE_DIR, f"{stalled.number + 1:012d}.json")
    stalled.release()  # releasing leaves the other writer's lease alone
    assert json.loads(storage.read_text(taken_over))["owner"] == "run-a"


def test_a_live_writer_keeps_its_lease_by_renewing_it(root):
    with lease(root, "long push", ttl_seconds=4) as held:
        time.sleep(6)  # past the first expiry: renewed every 1.3 s meanwhile
        assert held.holds()
        with pytest.raises(LeaseHeld), lease(root, "second", wait_seconds=0):
            pass


def test_local_leases_are_files_under_the_root(tmp_path):
    root = str(tmp_path / "root")
    with lease(root, "push"):
        assert os.listdir(os.path.join(root, LEASE_DIR)) == [f"{1:012d}.json"]
    with lease(root, "push"):  # the next writer takes the next number
        assert sorted(os.listdir(os.path.join(root, LEASE_DIR)))[-1] == f"{2:012d}.json"
