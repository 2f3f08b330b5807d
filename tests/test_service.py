"""`recsys serve`: the HTTP API over pushed models, its online feature stores
(embedded and a real Redis server), real-time engagements, retrieval over an item
index, the serving log, and what it refuses."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys.core.contracts import ITEM_IDS
from recsys.core.requests import raw_arrays
from recsys.core.tables import read_dataset
from recsys.serving import Context, Funnel
from recsys.serving.retrieval import ModelRetrieval, index_retrieval
from recsys.serving.service import Service, ServiceConfig, create_app, materialize
from tests.servers import redis_server


@pytest.fixture(scope="session")
def request_at(stages) -> str:
    """A request an hour after the snapshot's as_of, as the API takes it."""
    return pd.Timestamp(stages["counts"]["as_of"] + 3600, unit="s", tz="UTC").isoformat()


def seconds(at: str, offset: int) -> int:
    return int(pd.Timestamp(at).timestamp()) + offset


def started(client: TestClient, timeout: float = 300) -> TestClient:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready = client.get("/readyz")
        if ready.status_code == 200:
            return client
        time.sleep(0.2)
    raise AssertionError(f"not ready in {timeout} s: {ready.json()}")


@pytest.fixture(scope="session")
def client(pushed_root):
    """One service on the embedded store, for the tests that only send requests."""
    service = Service(ServiceConfig(pushed_root, max_k=20))
    with TestClient(create_app(service)) as client:
        yield started(client)


def known_users(root, n=5) -> list[str]:
    from recsys.serving.snapshot import FeatureSnapshot

    snapshot = FeatureSnapshot.load(os.path.join(root, "feature_snapshot", "1"))
    return list(snapshot.user_index[:n])


def test_recommendations_over_http_match_the_funnel(client, pushed_root, request_at):
    user = known_users(pushed_root)[0]
    response = client.post("/v1/recommend", json={"user_id": user, "k": 7, "at": request_at})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["known_user"] and body["versions"] == {
        "retrieval": 1,
        "ranking": 1,
        "features": 1,
    }
    assert len(body["items"]) == 7 and len(body["request_id"]) == 32
    assert set(body["milliseconds"]) >= {"features", "retrieval", "ranking", "rerank"}

    # The same page as the library's funnel with the retrieval model's own top-K:
    # below the ANN threshold the service's exact item index returns the same items.
    funnel = Funnel.from_serving_root(pushed_root)
    expected = funnel.recommend(user, Context(pd.Timestamp(request_at)), k=7).items
    assert [item["item_id"] for item in body["items"]] == list(expected["item_id"])
    np.testing.assert_allclose(
        [item["click_probability"] for item in body["items"]],
        expected["click_probability"],
        rtol=1e-5,
    )

    excluded = body["items"][0]["item_id"]
    again = client.post(
        "/v1/recommend", json={"user_id": user, "k": 7, "at": request_at, "exclude": [excluded]}
    ).json()
    assert excluded not in [item["item_id"] for item in again["items"]]
    assert again["removed"]["excluded"] == 1

    cold = client.post("/v1/recommend", json={"user_id": "nobody-seen-before", "k": 3}).json()
    assert not cold["known_user"] and len(cold["items"]) == 3


def test_item_index_retrieval_equals_the_model_and_hnsw_recalls_it(pushed_root, stages):
    from recsys.serving.backends import InProcessBackend
    from recsys.serving.snapshot import FeatureSnapshot

    snapshot_dir = os.path.join(pushed_root, "feature_snapshot", "1")
    features = FeatureSnapshot.load(snapshot_dir)
    backend = InProcessBackend.from_serving_root(pushed_root)
    model = ModelRetrieval(backend)
    context = Context(pd.Timestamp(stages["counts"]["as_of"], unit="s", tz="UTC")).columns()
    queries = {name: values[:50] for name, values in features.users.items()}
    queries.update({name: np.repeat(values, 50) for name, values in context.items()})
    from_model = model.retrieve(raw_arrays(queries, model.signature))[ITEM_IDS]
    from_model = [[item.decode() for item in row] for row in from_model]  # TF gives bytes
    top_k = len(from_model[0])
    exact = index_retrieval(snapshot_dir, top_k)
    assert not exact.approximate
    from_index = exact.retrieve(raw_arrays(queries, exact.signature))[ITEM_IDS]
    same = [len(set(a) & set(b)) / top_k for a, b in zip(from_model, from_index, strict=True)]
    assert np.mean(same) > 0.99  # ties at the cut may differ, nothing else

    approximate = index_retrieval(snapshot_dir, top_k, ann_min_items=0)
    assert approximate.approximate
    found = approximate.retrieve(raw_arrays(queries, approximate.signature))[ITEM_IDS]
    recall = np.mean([len(set(a) & set(b)) / top_k for a, b in zip(found, from_index, strict=True)])
    assert recall > 0.9


def test_malformed_requests_get_a_4xx_with_a_message(client):
    cases = {
        "k over max_k": ({"user_id": "u1", "k": 21}, 422),
        "k zero": ({"user_id": "u1", "k": 0}, 422),
        "no user": ({"k": 3}, 422),
        "empty user": ({"user_id": ""}, 422),
        "unknown field": ({"user_id": "u1", "page": 2}, 422),
        "user id too long": ({"user_id": "u" * 300}, 422),
        "exclusions over the bound": ({"user_id": "u1", "exclude": ["x"] * 1001}, 422),
        "time not a time": ({"user_id": "u1", "at": "yesterday-ish"}, 422),
    }
    for name, (body, status) in cases.items():
        response = client.post("/v1/recommend", json=body)
        assert response.status_code == status, (name, response.text)
        assert response.json()["problems"], name
    raw = client.post(
        "/v1/recommend", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert raw.status_code == 422
    huge = client.post("/v1/recommend", content=b"{" + b" " * 300_000 + b"}")
    assert huge.status_code == 413 and "bytes" in huge.json()["error"]
    path_like = client.post("/v1/recommend", json={"user_id": "../../etc/passwd", "k": 2})
    assert path_like.status_code == 200 and not path_like.json()["known_user"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(
                st.sampled_from(["user_id", "k", "exclude", "at", "x", "events", "clicked"]),
                children,
                max_size=4,
            )
        ),
        max_leaves=10,
    ),
    st.sampled_from(["/v1/recommend", "/v1/events"]),
)
def test_no_request_body_gets_a_server_error(client, body, path):
    response = client.post(path, content=json.dumps(body))
    assert response.status_code < 500, (body, response.text)


def test_health_readiness_metrics_and_openapi(client):
    assert client.get("/healthz").json() == {"alive": True}
    ready = client.get("/readyz").json()
    assert ready["ready"] and ready["versions"] == {"retrieval": 1, "ranking": 1}
    client.post("/v1/recommend", json={"user_id": "someone", "k": 2})
    metrics = client.get("/metrics").text
    for line in (
        'recsys_stage_seconds_bucket{le="0.05",stage="retrieval"}',
        'recsys_served_version{model="ranking"} 1.0',
        "recsys_feature_store_misses_total",
        "recsys_serving_log_dropped_rows_total 0.0",
        'recsys_requests_total{endpoint="/v1/recommend",status="200"}',
        "recsys_ready 1.0",
    ):
        assert line in metrics, line
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/recommend", "/v1/events", "/healthz", "/readyz"} <= set(paths)


def test_bearer_token_is_required_when_set(pushed_root):
    service = Service(ServiceConfig(pushed_root, token="s3cret", retrieval="model"))
    with TestClient(create_app(service)) as client:
        started(client)
        body = {"user_id": "u1", "k": 2}
        assert client.post("/v1/recommend", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/v1/recommend", json=body, headers=wrong).status_code == 401
        right = {"Authorization": "Bearer s3cret"}
        assert client.post("/v1/recommend", json=body, headers=right).status_code == 200
        assert client.get("/readyz").status_code == 200  # probes need no token


def test_engagements_reach_the_next_request_and_the_serving_log(pushed_root, request_at, tmp_path):
    """An event posted now changes the user's next request as the join would: its
    clicked item leads the history the models get (and is dropped as watched); the
    7-day counts take the day's events from the next midnight on, like the daily
    view training reads. The serving log shows the features that were served."""
    log_dir = str(tmp_path / "serving_log")
    service = Service(ServiceConfig(pushed_root, serving_log=log_dir, log_flush_seconds=0.2))
    user = known_users(pushed_root)[1]
    tomorrow = (pd.Timestamp(request_at) + pd.Timedelta(days=1)).isoformat()
    with TestClient(create_app(service)) as client:
        started(client)

        def page(at):
            response = client.post("/v1/recommend", json={"user_id": user, "k": 5, "at": at})
            return response.json()

        first = page(request_at)
        clicked = first["items"][0]["item_id"]
        events = [
            {
                "user_id": user,
                "item_id": clicked,
                "ts": seconds(request_at, -600),
                "clicked": True,
                "watch_seconds": 42.0,
            },
            {"user_id": user, "item_id": "x", "ts": seconds(request_at, -300), "clicked": False},
            # Not before the request: not in its features.
            {"user_id": user, "item_id": "y", "ts": seconds(request_at, 60), "clicked": True},
        ]
        assert client.post("/v1/events", json={"events": events}).json() == {"added": 3}
        second, next_day = page(request_at), page(tomorrow)
        assert clicked not in [item["item_id"] for item in second["items"]]
    logged = read_dataset(log_dir)
    served = {
        name: logged[logged["event_id"].str.startswith(response["request_id"])]
        for name, response in (("first", first), ("second", second), ("next_day", next_day))
    }
    assert [len(rows) for rows in served.values()] == [5, 5, 5]
    before, after, later = (rows.iloc[0] for rows in served.values())
    assert list(after["user_history_items"])[0] == clicked
    assert after["user_history_count"] == before["user_history_count"] + 1
    assert after["user_impressions_7d"] == before["user_impressions_7d"]  # same day
    assert list(later["user_history_items"])[:2] == ["y", clicked]
    assert later["user_impressions_7d"] == before["user_impressions_7d"] + 3
    assert later["user_clicks_7d"] == before["user_clicks_7d"] + 2


def test_a_failing_serving_log_never_fails_a_request(pushed_root, tmp_path, monkeypatch):
    from recsys.core import storage

    def broken(*args, **kwargs):
        raise OSError("injected: the log's disk is full")

    monkeypatch.setattr(storage, "write_parquet", broken)
    service = Service(
        ServiceConfig(pushed_root, serving_log=str(tmp_path / "log"), log_flush_seconds=0.1)
    )
    with TestClient(create_app(service)) as client:
        started(client)
        for user in known_users(pushed_root):
            assert client.post("/v1/recommend", json={"user_id": user, "k": 4}).status_code == 200
        deadline = time.monotonic() + 120
        while service.log.dropped < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        metrics = client.get("/metrics").text
    assert service.log.dropped == 20 and "disk is full" in service.log.last_error
    assert "recsys_serving_log_dropped_rows_total 20.0" in metrics


def test_redis_store_serves_what_the_embedded_one_does(pushed_root, request_at, tmp_path):
    """Two replicas on one Redis: the version is materialized once (the replicas
    race for it; `recsys materialize` after that finds it done), both serve the
    embedded store's pages, an event sent to one reaches the other; Redis gone is
    a 503 that says so, not a 500."""
    users = known_users(pushed_root, 3)
    with redis_server(str(tmp_path)) as (url, redis_process):
        first = Service(ServiceConfig(pushed_root, feature_store=url, retrieval="model"))
        second = Service(ServiceConfig(pushed_root, feature_store=url, retrieval="model"))
        embedded = Service(ServiceConfig(pushed_root, retrieval="model"))
        with (
            TestClient(create_app(first)) as a,
            TestClient(create_app(second)) as b,
            TestClient(create_app(embedded)) as c,
        ):
            stores = [started(client).get("/readyz").json()["feature_store"] for client in (a, b)]
            assert sorted(store["materialized"] for store in stores) == [False, True]
            again = materialize(pushed_root, url)  # the command after a push
            assert again["version"] == 1 and not again["materialized"]
            assert again["users"] == stores[0]["users"] == len(known_users(pushed_root, 10**6))
            command = [sys.executable, "-m", "recsys.app.cli", "materialize"]
            printed = subprocess.run(
                [*command, "--serving-root", pushed_root, "--feature-store", url],
                capture_output=True,
                text=True,
            ).stdout
            assert f"version 1: {again['users']} users already there" in printed
            started(c)
            import redis

            keys = redis.Redis.from_url(url).keys("recsys:1-*:u:*")
            assert len(keys) == len(known_users(pushed_root, 10**6))

            def page(client, user):
                body = {"user_id": user, "k": 6, "at": request_at}
                return [
                    item["item_id"]
                    for item in client.post("/v1/recommend", json=body).json()["items"]
                ]

            for user in users:
                assert page(a, user) == page(c, user) == page(b, user)
            event = {
                "user_id": users[0],
                "item_id": page(a, users[0])[0],
                "clicked": True,
                "ts": seconds(request_at, -5),
                "watch_seconds": 10,
            }
            a.post("/v1/events", json={"events": [event]})
            assert event["item_id"] not in page(b, users[0])

            redis_process.kill()
            redis_process.wait()
            down = b.post("/v1/recommend", json={"user_id": users[1], "k": 2})
            assert down.status_code == 503 and "feature store" in down.json()["error"]


def test_a_replaced_version_closes_after_its_last_request():
    from recsys.serving.service import Bundle

    closed = []

    class Backend:
        def close(self):
            closed.append(True)

    bundle = Bundle({"retrieval": 1}, None, "1-x", {"history_length": 10}, [Backend()])
    assert bundle.acquire() and bundle.acquire()
    bundle.retire()  # replaced while two requests still use it
    bundle.release()
    assert not closed
    bundle.release()
    assert closed == [True]
    assert not bundle.acquire()  # a late request takes the new bundle instead
    bundle.retire()
    assert closed == [True]  # closed once


def test_switching_the_ranker_alone_keeps_serving(stages, request_at, tmp_path):
    """A rollback of one model keeps the other's version, and so the snapshot and
    the store's rows: the switch must not drop what the new bundle still reads."""
    from recsys.serving import serving_root as root_
    from tests.conftest import push_stages

    root = str(tmp_path / "serving")
    assert push_stages(stages, root)["pushed"]
    assert push_stages(stages, root, rerank='{"k": 10, "max_per_creator": 1}')["pushed"]
    service = Service(ServiceConfig(root, retrieval="model", reload_seconds=3600))
    assert service.reload() and service.bundle.versions == {"retrieval": 2, "ranking": 2}
    root_.rollback(root, "ranking", 1, reason="test")
    assert service.reload() and service.bundle.versions == {"retrieval": 2, "ranking": 1}
    body = service.recommend(known_users(root)[0], pd.Timestamp(request_at), k=3)
    assert body["versions"] == {"retrieval": 2, "ranking": 1, "features": 2}
    assert len(body["items"]) == 3 and body["known_user"]
    service.close()


def test_an_exploring_service_returns_each_items_propensity(pushed_root, request_at):
    """Half the requests show a softmax draw in the last slot; the first items are the
    ranked page's, certain, and the last item appears as often as its propensity."""
    from collections import Counter

    from recsys.serving.exploration import ExplorationConfig

    user = known_users(pushed_root)[1]
    ranked = Funnel.from_serving_root(pushed_root).recommend(
        user, Context(pd.Timestamp(request_at)), k=5, log=False
    )
    ranked_ids = list(ranked.items["item_id"])
    assert ranked.items["propensity"].tolist() == [1.0] * 5  # no exploration: certain
    exploring = ExplorationConfig(share=0.5, temperature=0.05)
    service = Service(ServiceConfig(pushed_root, retrieval="model", exploration=exploring))
    shown, propensity, requests = Counter(), {}, 300
    with TestClient(create_app(service)) as client:
        started(client)
        for _ in range(requests):
            items = client.post(
                "/v1/recommend", json={"user_id": user, "k": 5, "at": request_at}
            ).json()["items"]
            assert [item["item_id"] for item in items[:4]] == ranked_ids[:4]
            assert [item["propensity"] for item in items[:4]] == [1.0] * 4
            shown[items[4]["item_id"]] += 1
            propensity[items[4]["item_id"]] = items[4]["propensity"]
    assert len(shown) > 1 and propensity[ranked_ids[4]] > 0.5
    for item, p in propensity.items():
        sd = np.sqrt(p * (1 - p) / requests)
        assert abs(shown[item] / requests - p) < 4 * sd + 0.01, (item, shown[item], p)


def test_an_experiment_splits_users_and_logs_each_arm(pushed_root, request_at, tmp_path):
    """Each user gets their hashed arm on every request; the arm's settings serve it
    (a 3-item page for one arm); the exposure log has the arm, the position and the
    propensity of every shown item under the serving log's event ids."""
    from recsys.core.tables import read_dataset
    from recsys.serving.experiment import Experiment

    experiment = Experiment.parse(
        {
            "name": "service",
            "arms": [
                {"name": "funnel", "share": 0.5},
                {"name": "short", "share": 0.5, "rerank": {"k": 3}},
            ],
        }
    )
    exposures = str(tmp_path / "exposures")
    config = ServiceConfig(
        pushed_root, experiment=experiment, exposure_log=exposures, log_flush_seconds=0.2
    )
    users = known_users(pushed_root, n=12)
    with TestClient(create_app(Service(config))) as client:
        started(client)
        served = {}
        for user in users * 2:
            body = client.post("/v1/recommend", json={"user_id": user, "at": request_at}).json()
            arm = experiment.arm_of(user).name
            assert body["arm"] == arm and served.setdefault(user, arm) == arm
            assert len(body["items"]) == (3 if arm == "short" else 10)
        metrics = client.get("/metrics").text
    assert {"funnel", "short"} <= set(served.values())
    for arm in ("funnel", "short"):
        count = 2 * sum(a == arm for a in served.values())
        assert f'recsys_arm_requests_total{{arm="{arm}"}} {float(count)}' in metrics
    logged = read_dataset(exposures)
    assert len(logged) == 2 * sum(3 if a == "short" else 10 for a in served.values())
    assert (logged["arm"] == logged["user_id"].map(served)).all()
    event_ids = logged["request_id"] + "-" + logged["position"].astype(str)
    assert (logged["event_id"] == event_ids).all()  # the serving log's event ids
    assert (logged["propensity"] == 1.0).all()  # no exploration: every item certain
