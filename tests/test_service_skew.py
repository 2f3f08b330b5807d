"""End to end: a day of traffic through `recsys serve`, then the next run's data
checks on it. The pages the service served become that day's impressions, the
users' clicks are sent back as events as they happen, and the service's serving
log becomes the day's serving log: the next run's skew check compares what the
service fed the models with what the training join computes for the same
impressions. It finds no skew; the same log with one feature served differently
is caught."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from recsys.components.validate.validate import SUMMARY_FILE, ValidationFailed, validate
from recsys.core.contracts import (
    CLICKED,
    DATASET_SCHEMAS,
    EVENT_ID,
    EVENT_TS,
    IMPRESSIONS,
    ITEM_ID,
    PROPENSITY,
    SERVING_LOG,
    USER_ID,
    WATCH_SECONDS,
)
from recsys.core.tables import read_dataset, write_dataset
from recsys.serving.service import Service, ServiceConfig, create_app
from tests.conftest import EVAL_DAYS, LOOKBACK_DAYS, push_stages
from tests.test_service import started

# One worker runs both tests: they share the served day and the next run.
pytestmark = pytest.mark.xdist_group("service_skew")
REQUESTS, PAGE = 600, 5


@pytest.fixture(scope="session")
def served_day(stages, tiny_data, tmp_path_factory):
    """The day after the pushed window served by the service: returns the next run's
    data root (the tiny data, plus that day's impressions and serving log)."""
    root = tmp_path_factory.mktemp("served_day")
    serving_root = str(root / "serving")
    assert push_stages(stages, serving_root)["pushed"]
    log_dir = str(root / "service_log")
    service = Service(ServiceConfig(serving_root, serving_log=log_dir, log_flush_seconds=1))
    as_of = int(stages["counts"]["as_of"])
    users = pd.read_parquet(os.path.join(tiny_data, "users.parquet"))[USER_ID].to_numpy()
    items = pd.read_parquet(os.path.join(tiny_data, "items.parquet"))
    duration = items.set_index(ITEM_ID)["duration_s"]
    rng = np.random.default_rng(0)
    # Distinct request times over the day, in order; users drawn with repeats, so
    # later requests of a user see the clicks of their earlier ones.
    times = np.sort(rng.choice(np.arange(as_of + 60, as_of + 86_000), REQUESTS, replace=False))
    impressions = []
    with TestClient(create_app(service)) as client:
        started(client)
        for at, user in zip(times, rng.choice(users, REQUESTS), strict=True):
            at = int(at)
            page = client.post(
                "/v1/recommend",
                json={
                    "user_id": str(user),
                    "k": PAGE,
                    "at": pd.Timestamp(at, unit="s").isoformat(),
                },
            ).json()
            # The user clicks as the ranker predicted, and watches part of it (never
            # more than the video: ingest would quarantine that).
            shown = pd.DataFrame(page["items"])
            clicked = rng.random(len(shown)) < shown["click_probability"].to_numpy()
            longest = duration.reindex(shown[ITEM_ID]).to_numpy()
            events = pd.DataFrame(
                {
                    EVENT_ID: [f"{page['request_id']}-{i}" for i in range(len(shown))],
                    EVENT_TS: at,
                    USER_ID: str(user),
                    ITEM_ID: shown[ITEM_ID],
                    CLICKED: clicked.astype(np.int64),
                    WATCH_SECONDS: np.floor(
                        np.where(clicked, np.minimum(rng.uniform(5, 300, len(shown)), longest), 0)
                        * 10
                    )
                    / 10,
                    # Logged with the impression, as the API asks.
                    PROPENSITY: shown[PROPENSITY],
                }
            )
            impressions.append(events)
            client.post(
                "/v1/events",
                json={
                    "events": [
                        {
                            "user_id": row[USER_ID],
                            "item_id": row[ITEM_ID],
                            "ts": at,
                            "clicked": bool(row[CLICKED]),
                            "watch_seconds": float(row[WATCH_SECONDS]),
                        }
                        for row in events.to_dict(orient="records")
                    ]
                },
            )
    data = root / "data"
    shutil.copytree(tiny_data, data, ignore=shutil.ignore_patterns(f"{SERVING_LOG}*"))
    day = pd.concat(impressions, ignore_index=True)
    earlier = pd.read_parquet(data / f"{IMPRESSIONS}.parquet")
    day[EVENT_TS] = pd.to_datetime(day[EVENT_TS], unit="s", utc=True).astype(
        earlier[EVENT_TS].dtype
    )
    pd.concat([earlier, day[earlier.columns]], ignore_index=True).to_parquet(
        data / f"{IMPRESSIONS}.parquet", index=False
    )
    shutil.copytree(log_dir, data / SERVING_LOG)
    return {"data": str(data), "day": day, "root": root}


@pytest.fixture(scope="session")
def next_run(served_day):
    """The next run's ingest, join and validate on the served day (the pipeline's
    own stages, as `recsys check` runs them)."""
    from recsys.pipelines.in_process import run_in_process

    workdir = str(served_day["root"] / "check")
    arguments = {
        "data_root": served_day["data"],
        "serving_root": "",
        "lookback_days": LOOKBACK_DAYS,
        "eval_days": EVAL_DAYS,
    }
    return run_in_process(workdir, arguments, stop_after="validate")


def test_what_the_service_served_passes_the_next_runs_skew_check(next_run):
    counts = dict(next_run.artifact("ingest", "ingest_metrics").metadata)
    with open(os.path.join(next_run.artifact("validate", "anomalies").path, SUMMARY_FILE)) as f:
        summary = json.load(f)
    assert counts["serving_log_read"] == REQUESTS * PAGE
    assert counts["serving_log_quarantined"] == 0
    assert summary["measurements"]["skew"], summary["notes"]  # skew was measured
    assert not [a for a in summary["anomalies"] if a["kind"] == "skew"], summary["markdown"]


def test_a_feature_served_differently_is_caught(next_run, tmp_path):
    """The same check, on the same data, with the service's log tampered with."""
    paths = next_run.paths()
    datasets = {}
    for name in DATASET_SCHEMAS:
        datasets[name] = str(tmp_path / name)
        shutil.copytree(paths[name], datasets[name])
    log = read_dataset(datasets[SERVING_LOG])
    log["user_impressions_7d"] = log["user_impressions_7d"] * 3  # counted three times
    shutil.rmtree(datasets[SERVING_LOG])
    write_dataset(log, datasets[SERVING_LOG])
    span_start = next_run.artifact("ingest", "ingest_metrics").metadata["span_start"]
    with pytest.raises(ValidationFailed) as failure:
        validate(datasets, "", str(tmp_path / "stats"), str(tmp_path / "anomalies"), span_start)
    assert "user_impressions_7d" in str(failure.value) and "skew" in str(failure.value)
