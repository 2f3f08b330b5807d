"""Hot reload under load: `recsys serve` in its own process, requests from two
client threads the whole time, while a new version is pushed, rolled back, and a
broken version is served by mistake. No request may fail."""

import json
import os
import sys
import threading
import time
import urllib.request

from recsys.serving import serving_root as root_
from tests.conftest import push_stages
from tests.servers import free_port, server


class Load:
    """Closed-loop clients: each sends its next request when the last one answered;
    records every status and the versions each response was served by."""

    def __init__(self, url: str, clients: int = 2):
        self.url, self.results, self._stop = url, [], threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, client: int) -> None:
        n = 0
        while not self._stop.is_set():
            body = json.dumps({"user_id": f"user-{client}-{n % 50}", "k": 5}).encode()
            request = urllib.request.Request(
                f"{self.url}/v1/recommend", body, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    versions = json.loads(response.read())["versions"]
                    self.results.append((time.monotonic(), response.status, versions, client))
            except Exception as error:  # every failure is a result the test reports
                self.results.append((time.monotonic(), repr(error), None, client))
            n += 1

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def wait_for_requests(self, count: int, timeout: float = 600) -> None:
        """Keep the load on until ``count`` requests were answered (a slow or busy
        machine answers fewer per second, not fewer in all)."""
        deadline = time.monotonic() + timeout
        while len(self.results) < count:
            assert time.monotonic() < deadline, f"{len(self.results)} requests in {timeout} s"
            time.sleep(0.1)

    def wait_for(self, versions: dict, timeout: float = 600) -> float:
        """Seconds until a response served by ``versions`` arrived (from now)."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if any(r[2] and _models(r[2]) == versions for r in self.results if r[0] >= start):
                return time.monotonic() - start
            time.sleep(0.1)
        raise AssertionError(f"no response from {versions} within {timeout} s")


def _models(versions: dict) -> dict:
    return {name: versions[name] for name in ("retrieval", "ranking")}


def ready(url: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} not ready within {timeout} s")


def test_versions_switch_under_load_without_a_failed_request(stages, tmp_path):
    root = str(tmp_path / "serving")
    assert push_stages(stages, root)["pushed"]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        os.path.join(os.path.dirname(sys.executable), "recsys"),
        "serve", "--serving-root", root, "--port", str(port), "--reload-seconds", "0.5",
        "--retrieval", "model",
    ]  # fmt: skip
    with server(command, port, str(tmp_path / "serve.log")):
        assert ready(url)["versions"] == {"retrieval": 1, "ranking": 1}
        with Load(url) as load:
            time.sleep(2)
            # Version 2: the same models with other re-ranking rules (new content).
            assert push_stages(stages, root, rerank='{"k": 10, "max_per_creator": 1}')["pushed"]
            switch = load.wait_for({"retrieval": 2, "ranking": 2})
            time.sleep(1)
            for model in ("retrieval", "ranking"):
                root_.rollback(root, model, 1, reason="test")
            rollback = load.wait_for({"retrieval": 1, "ranking": 1})
            time.sleep(1)
            # A version that cannot load (its ranking SavedModel lost its graph) is
            # reported and never served; version 1 keeps serving.
            os.remove(os.path.join(root, "ranking", "2", "saved_model.pb"))
            root_.rollback(root, "ranking", 2, reason="test: a broken version")
            deadline = time.monotonic() + 600
            while "not loaded" not in ready(url)["status"] and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1)
            load.wait_for_requests(51)
        status = ready(url)
    assert "ranking v2, retrieval v1 not loaded" in status["status"], status
    assert status["versions"] == {"retrieval": 1, "ranking": 1}
    failures = [r for r in load.results if r[1] != 200]
    assert not failures, failures[:5]
    assert len(load.results) > 50
    for client in (0, 1):
        # Each client's requests follow one another, so each sees version 1, then 2,
        # then 1 again: every switch once, never back and forth, never the broken one.
        served = [_models(r[2])["retrieval"] for r in load.results if r[3] == client]
        changes = [b for a, b in zip(served, served[1:], strict=False) if a != b]
        assert changes == [2, 1], changes
    print(f"switch seen after {switch:.1f} s, rollback after {rollback:.1f} s, "
          f"{len(load.results)} requests, none failed")  # fmt: skip
