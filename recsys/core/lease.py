"""A writer lease on a root (local or object store): one writer at a time.

An object store has no ``flock``. The lease is an object created with a
conditional write (``storage.create_exclusive``: only if absent), so of two
writers asking at once exactly one gets it. Leases are numbered
(``<root>/.lease/<n>.json``) and a number is never used twice: the highest is the
current lease, free when its holder released it (rewritten as released), died or
let it expire, and the next writer takes it by creating the next number. A writer
that read a stale listing tries a number that exists and fails, so numbers must
not disappear while someone may still try them: only leases ended over an hour
ago are deleted.

A writer that dies keeps its lease until it expires (``ttl_seconds``, renewed
every third of that by a background thread while the writer lives), or at once
when it ran on this machine and its process is gone. A writer checks that it
still holds the lease (``Lease.check``) before each step that others would see
(a version made visible, ``models.config`` switched): a writer stalled past its
expiry, whose lease another has taken, stops there instead of writing over it.
"""

import contextlib
import json
import os
import socket
import threading
import time
import uuid

from recsys.core import storage

LEASE_DIR = ".lease"
KEEP_ENDED_SECONDS = 3600  # ended leases younger than this stay (see above)


class LeaseHeld(RuntimeError):
    """Another writer holds the lease (and did not release it within the wait)."""


class LeaseLost(RuntimeError):
    """This writer's lease expired and another writer took it."""


def _number(name: str) -> int | None:
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and stem.isdigit() else None


def _held(holder: dict | None) -> bool:
    """Whether a lease record still binds: not released, not expired, holder alive."""
    return (
        bool(holder)
        and not holder.get("released")
        and holder.get("expires", 0) > time.time()
        and _alive_here(holder)
    )


def _alive_here(holder: dict) -> bool:
    """False only when the holder ran on this machine and its process is gone."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Lease:
    def __init__(self, root: str, owner: str, ttl_seconds: float):
        self.root, self.owner, self.ttl = root, owner, ttl_seconds
        self.directory = storage.join(root, LEASE_DIR)
        self.token = uuid.uuid4().hex
        self.number: int | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def _path(self, number: int) -> str:
        return storage.join(self.directory, f"{number:012d}.json")

    def _body(self) -> bytes:
        return json.dumps(
            {
                "owner": self.owner,
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "expires": time.time() + self.ttl,
            }
        ).encode()

    def _numbers(self) -> list[int]:
        return sorted(n for n in map(_number, storage.listdir(self.directory)) if n is not None)

    def current(self) -> tuple[int, dict | None]:
        """(highest lease number, its content; None if there is none or it is unreadable)."""
        numbers = self._numbers()
        if not numbers:
            return 0, None
        try:
            return numbers[-1], json.loads(storage.read_text(self._path(numbers[-1])))
        except (FileNotFoundError, ValueError):
            return numbers[-1], None

    def try_acquire(self) -> dict | None:
        """Take the lease if it is free; None when taken, else the holder's record."""
        top, holder = self.current()
        if _held(holder):
            return holder
        if not storage.create_exclusive(self._path(top + 1), self._body()):
            return self.current()[1] or {}  # another writer took it first
        self.number = top + 1
        self._renewer = threading.Thread(target=self._renew, daemon=True)
        self._renewer.start()
        self._delete_ended()
        return None

    def _delete_ended(self) -> None:
        cutoff = time.time() - KEEP_ENDED_SECONDS
        for number in self._numbers():
            if number >= self.number:
                break
            with contextlib.suppress(FileNotFoundError, ValueError):
                ended = json.loads(storage.read_text(self._path(number)))
                if ended.get("expires", 0) < cutoff:
                    storage.remove(self._path(number))

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with contextlib.suppress(Exception):  # the check before each commit decides
                if self.holds():
                    storage.write_bytes(self._path(self.number), self._body())

    def holds(self) -> bool:
        top, holder = self.current()
        return (
            top == self.number
            and bool(holder)
            and holder.get("token") == self.token
            and not holder.get("released")
        )

    def check(self, what: str) -> None:
        """Raise LeaseLost unless this writer still holds the lease."""
        if not self.holds():
            raise LeaseLost(
                f"{self.root}: the writer lease expired and another writer took it before "
                f"{what}; stopped without writing. Run again."
            )

    def release(self) -> None:
        self._stop.set()
        if self._renewer:
            self._renewer.join()
        if self.number is not None and self.holds():
            released = {**json.loads(self._body()), "released": True, "expires": time.time()}
            storage.write_text(self._path(self.number), json.dumps(released))
        self.number = None


@contextlib.contextmanager
def lease(root: str, owner: str, wait_seconds: float = 600, ttl_seconds: float = 60):
    """Hold the writer lease on ``root`` for the block, waiting up to ``wait_seconds``
    for another writer to finish; raises LeaseHeld naming it otherwise."""
    held = Lease(root, owner, ttl_seconds)
    deadline = time.monotonic() + wait_seconds
    while (holder := held.try_acquire()) is not None:
        if time.monotonic() >= deadline:
            expires = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(holder.get("expires", 0)))
            )
            raise LeaseHeld(
                f"{root} is being written by {holder.get('owner', 'another writer')} "
                f"(host {holder.get('host', '?')}, pid {holder.get('pid', '?')}); waited "
                f"{wait_seconds:g} s. Its lease expires at {expires} unless that writer "
                "renews it: wait for it to finish, or, if it died, until then."
            )
        time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    try:
        yield held
    finally:
        held.release()
