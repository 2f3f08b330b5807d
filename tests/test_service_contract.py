"""``recsys serve`` does what its OpenAPI document says, and refuses work past its
capacity instead of queueing it.

The contract test is generated from the document the service publishes
(schemathesis, over a real HTTP server): valid and invalid bodies for every
operation, each answer's status code, content type, headers and body checked
against the document, and every invalid body refused with a 4xx.
"""

import contextlib
import socket
import threading
import time

import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, settings
from schemathesis.generation import GenerationMode

from recsys.serving.service import Service, ServiceConfig, create_app


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served(service: Service):
    """``service`` behind uvicorn on a free loopback port, ready: its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(service), host="127.0.0.1", port=_free_port(), log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.config.port}"
    deadline = time.monotonic() + 600  # a hang detector: loading takes seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"{url}/readyz", timeout=30).status_code == 200:
                break
        time.sleep(0.2)
    else:
        raise AssertionError("the service did not become ready")
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(60)


@pytest.fixture(scope="module")
def service_url(pushed_root):
    with served(Service(ServiceConfig(pushed_root, max_k=20, max_in_flight=64))) as url:
        yield url


def _schema(url: str):
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
    return schema


contract = schemathesis.pytest.from_fixture("service_schema")


@pytest.fixture(scope="module")
def service_schema(service_url):
    return _schema(service_url)


@contract.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_its_document_says(case, service_url):
    case.call_and_validate(base_url=service_url)


def test_the_document_is_strict_where_the_service_is(service_url):
    """The cases found by hand before the contract test existed: a number for a time,
    a boolean for a number, text that is not JSON; and what the document says of
    /metrics and of the statuses."""
    post = lambda path, **kw: requests.post(f"{service_url}{path}", timeout=60, **kw)  # noqa: E731
    assert post("/v1/recommend", json={"user_id": "u1", "at": 0}).status_code == 422
    assert post("/v1/recommend", json={"user_id": "u1", "k": True}).status_code == 422
    assert post("/v1/recommend", json={"user_id": "u1", "k": "3"}).status_code == 422
    event = {"user_id": "u1", "item_id": "i1", "clicked": True, "watch_seconds": False}
    assert post("/v1/events", json={"events": [event]}).status_code == 422
    assert post("/v1/events", json={"events": [{**event, "watch_seconds": 3}]}).status_code == 200
    assert post("/v1/events", json={"events": [{**event, "clicked": 1}]}).status_code == 422
    far = post("/v1/recommend", json={"user_id": "u1", "at": "0001-01-01T00:00:00Z"})
    assert far.status_code == 422 and "in the years 1970 to 2261" in far.text
    not_json = post(
        "/v1/recommend", data=b"{not json", headers={"content-type": "application/json"}
    )
    document = requests.get(f"{service_url}/openapi.json", timeout=60).json()
    recommend = document["paths"]["/v1/recommend"]["post"]["responses"]
    assert str(not_json.status_code) in recommend and not_json.json()["error"]
    assert {"200", "400", "401", "413", "422", "503"} <= set(recommend)
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    (media_type,) = metrics
    assert media_type.startswith("text/plain")
    assert (
        requests.get(f"{service_url}/metrics", timeout=60)
        .headers["content-type"]
        .startswith("text/plain")
    )


def test_past_capacity_requests_are_refused_at_once_and_probes_still_answer(pushed_root):
    """Two requests in progress (held inside the service) fill max_in_flight=2: the
    next ones get 503 with Retry-After before either of those finishes, counted in
    /metrics; liveness and readiness answer meanwhile; then the two complete."""
    service = Service(ServiceConfig(pushed_root, max_in_flight=2))
    release, entered = threading.Event(), threading.Semaphore(0)
    recommend = service.recommend

    def held(*args, **kwargs):
        entered.release()
        assert release.wait(600), "never released"
        return recommend(*args, **kwargs)

    service.recommend = held
    with served(service) as url:
        body = {"user_id": "someone", "k": 3}
        answers = []

        def ask():
            answers.append(requests.post(f"{url}/v1/recommend", json=body, timeout=600).status_code)

        holders = [threading.Thread(target=ask) for _ in range(2)]
        for thread in holders:
            thread.start()
        for _ in holders:  # both are inside the service now (or one answered: a failure)
            assert entered.acquire(timeout=600) or answers, answers
        refused = [requests.post(f"{url}/v1/recommend", json=body, timeout=60) for _ in range(5)]
        assert [r.status_code for r in refused] == [503] * 5
        assert all(r.headers["retry-after"] == "1" for r in refused)
        assert "at capacity" in refused[0].json()["error"]
        assert requests.get(f"{url}/healthz", timeout=60).json() == {"alive": True}
        assert requests.get(f"{url}/readyz", timeout=60).status_code == 200
        metrics = requests.get(f"{url}/metrics", timeout=60).text
        assert 'recsys_rejected_total{endpoint="/v1/recommend"} 5.0' in metrics
        assert "recsys_in_flight 2.0" in metrics
        assert answers == []  # the two held requests are still in progress
        release.set()
        for thread in holders:
            thread.join(600)
        assert answers == [200, 200]
