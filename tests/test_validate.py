"""Validate: each anomaly kind injected into otherwise clean data is found, blocks
(or warns, by policy) with a message a person can act on; clean data raises none."""

import json
import re
import shutil

import pandas as pd
import pytest

from recsys.app.data_check import check_span
from recsys.app.generate import generate
from recsys.components.validate.config import ValidateConfig
from recsys.components.validate.validate import (
    SPAN,
    ValidationFailed,
    find_baseline,
    parse_policy,
    validate,
)
from recsys.core.contracts import DATASET_SCHEMAS
from recsys.core.tables import DataError, read_dataset, write_dataset

DETECTION = dict(users=300, items=120, days=10)
BASELINE_AS_OF, AS_OF = "2026-01-14", "2026-01-15"  # spans: days 8 and 9 of the data


def run_span(data, as_of, workdir, statistics_root="", drift_baseline="", anomaly_policy="{}"):
    """ingest -> join -> validate for one span, as the pipeline chains them."""
    return check_span(
        data,
        workdir,
        dict(
            as_of=as_of,
            lookback_days=7,
            eval_days=3,
            statistics_root=statistics_root,
            drift_baseline=drift_baseline,
            anomaly_policy=anomaly_policy,
        ),
    )["validate"]


@pytest.fixture(scope="session")
def clean_baseline(tmp_path_factory):
    """Statistics of the clean seed-1 span before the injection day."""
    root = tmp_path_factory.mktemp("baseline")
    generate(str(root / "data"), seed=1, **DETECTION)
    run_span(str(root / "data"), BASELINE_AS_OF, str(root / "run"), str(root / "statistics"))
    return find_baseline(str(root / "statistics"), "2026-01-15")[0]


@pytest.mark.trains
def test_clean_data_raises_no_alarm_over_five_seeds(tmp_path):
    for seed in range(1, 6):
        generate(str(tmp_path / f"data{seed}"), seed=seed, **DETECTION)
        statistics_root = str(tmp_path / f"statistics{seed}")
        first = run_span(
            str(tmp_path / f"data{seed}"),
            BASELINE_AS_OF,
            str(tmp_path / f"first{seed}"),
            statistics_root,
        )
        assert any("drift was not checked" in note for note in first["notes"])
        second = run_span(
            str(tmp_path / f"data{seed}"), AS_OF, str(tmp_path / f"second{seed}"), statistics_root
        )
        assert first["anomalies"] == second["anomalies"] == [], (seed, second["markdown"])
        assert second["notes"] == []  # drift and skew were both checked
        assert second["measurements"]["drift"] and second["measurements"]["skew"]
        assert second["stored_span"].endswith(f"span=2026-01-14/{SPAN}.stats.pb")


@pytest.mark.parametrize(
    "injection, kind, feature, expected",
    [
        (dict(drift="numeric", drift_day=9), "drift", "duration_s", "Jensen-Shannon divergence"),
        (dict(drift="category", drift_day=9), "drift", "category", "Linfty distance"),
        (dict(drift="volume", drift_day=9), "volume", "", "ratio of num examples"),
        (dict(skew="device", skew_day=7), "skew", "device", "between training and serving"),
        (
            dict(skew="watch_minutes", skew_day=7),
            "skew",
            "user_watch_seconds_7d",
            "between training and serving",
        ),
    ],
)
def test_injected_drift_and_skew_block_with_advice(
    injection, kind, feature, expected, clean_baseline, tmp_path
):
    generate(str(tmp_path / "data"), seed=1, **DETECTION, **injection)
    with pytest.raises(ValidationFailed) as failure:
        run_span(
            str(tmp_path / "data"),
            AS_OF,
            str(tmp_path / "run"),
            str(tmp_path / "statistics"),
            drift_baseline=clean_baseline,
        )
    message = str(failure.value)
    where = f"feature '{feature}'" if feature else "dataset"
    blocking = [line for line in message.splitlines() if line.startswith("  - ")]
    assert any(
        f"[{kind}, block]" in line and where in line and expected in line for line in blocking
    ), message
    assert all(f"[{kind}, block]" in line for line in blocking), message  # nothing else fires
    assert f"What to do ({kind}):" in message
    assert not (tmp_path / "statistics").exists()  # a blocked span is not a baseline
    page = (tmp_path / "run" / "report.html").read_text()  # written before the run stops
    assert "Blocking anomalies" in page and "previous_span" in page and "serving_log" in page

    # The same anomaly under a warn policy: the run goes on, the warning is kept.
    summary = run_span(
        str(tmp_path / "data"),
        AS_OF,
        str(tmp_path / "warned"),
        str(tmp_path / "statistics"),
        drift_baseline=clean_baseline,
        anomaly_policy=json.dumps({kind: "warn"}),
    )
    assert {a.kind for a in summary["anomalies"]} == {kind}
    assert "**Warnings**" in summary["markdown"]
    assert summary["stored_span"]


def _copy(stages, tmp_path):
    copies = {}
    for name in DATASET_SCHEMAS:
        copies[name] = str(tmp_path / name)
        shutil.copytree(stages["paths"][name], copies[name])
    return copies


def _rewrite(copies, name, frame):
    shutil.rmtree(copies[name])
    write_dataset(frame, copies[name])


def _validate(stages, copies, tmp_path, **options):
    return validate(
        copies,
        "",
        str(tmp_path / "stats"),
        str(tmp_path / "anomalies"),
        stages["counts"]["span_start"],
        ValidateConfig(**options),
        report_path=str(tmp_path / "report.html"),
    )


def test_clean_run_reports_every_dataset_offline(stages):
    summary = stages["validation"]
    assert summary["anomalies"] == []
    assert summary["train_events"] == {"rows": stages["counts"]["train_events"], "anomalies": 0}
    assert summary["serving_log"]["rows"] == stages["counts"]["serving_log"] > 0
    assert "| serving_log |" in summary["markdown"] and "(SERVING)" in summary["markdown"]
    assert summary["measurements"]["skew"]  # skew checked; drift has no baseline yet
    assert any("drift was not checked" in note for note in summary["notes"])


@pytest.mark.parametrize(
    "dataset, change, anomaly_type, expected",
    [
        (
            "eval_events",
            lambda f: f.assign(referrer="push"),
            "SCHEMA_NEW_COLUMN",
            "New column (column in data but not in schema)",
        ),
        (
            "items",
            lambda f: f.assign(
                category=["crypto"] * (len(f) // 2) + list(f["category"][len(f) // 2 :])
            ),
            "ENUM_TYPE_UNEXPECTED_STRING_VALUES",
            "values missing from the schema: crypto",
        ),
        (
            "serving_log",
            lambda f: f.assign(clicked=0),
            "SCHEMA_NEW_COLUMN",
            "New column clicked found in data but not in the environment SERVING",
        ),
        (
            "train_examples",
            lambda f: f.drop(columns=["device"]),
            "SCHEMA_MISSING_COLUMN",
            "Column is completely missing",
        ),
    ],
)
def test_schema_violations_block_and_policy_can_warn(
    dataset, change, anomaly_type, expected, stages, tmp_path
):
    copies = _copy(stages, tmp_path)
    _rewrite(copies, dataset, change(read_dataset(copies[dataset])))
    with pytest.raises(ValidationFailed) as failure:
        _validate(stages, copies, tmp_path)
    message = str(failure.value)
    assert f"[schema, block] {dataset}:" in message and expected in message, message
    assert "What to do (schema):" in message and "recsys schema diff" in message
    assert (tmp_path / "anomalies" / f"{dataset}.anomalies.pbtxt").exists()
    assert "Blocking anomalies" in (tmp_path / "report.html").read_text()

    summary = _validate(
        stages, copies, tmp_path / "warn", anomaly_policy=json.dumps({anomaly_type: "warn"})
    )
    assert [(a.dataset, a.type, a.action) for a in summary["anomalies"]] == [
        (dataset, anomaly_type, "warn")
    ]


def test_missing_serving_log_is_said_not_skipped(stages, tmp_path):
    copies = _copy(stages, tmp_path)
    _rewrite(copies, "serving_log", pd.DataFrame({"event_id": pd.Series([], dtype=str)}))
    summary = _validate(stages, copies, tmp_path)
    assert any(
        "serving_log has no rows in the span: skew was not checked" in note
        for note in summary["notes"]
    )
    assert "skew was not checked" in (tmp_path / "report.html").read_text()


def test_policy_errors_name_the_problem():
    assert parse_policy('{"drift": "warn", "SCHEMA_NEW_COLUMN": "block"}')
    with pytest.raises(DataError, match="unknown key 'drfit'"):
        parse_policy('{"drfit": "warn"}')
    with pytest.raises(DataError, match="must be 'block' or 'warn'"):
        parse_policy('{"drift": "ignore"}')
    with pytest.raises(DataError, match="not JSON"):
        parse_policy("drift=warn")


def test_the_report_draws_each_feature_in_every_dataset_offline():
    """One SVG chart per plottable feature, each dataset in its legend, drawn to its
    data's range; an id-like string feature is listed, not drawn."""
    import xml.etree.ElementTree as ElementTree

    import numpy as np
    import tensorflow_data_validation as tfdv

    from recsys.components.validate.report import render

    frames = {
        "train_events": pd.DataFrame(
            {
                "watch_seconds": np.linspace(0.0, 30.0, 80),
                "device": ["phone", "tv"] * 40,
                "event_id": [f"e{i}" for i in range(80)],
            }
        ),
        "eval_events": pd.DataFrame(
            {
                "watch_seconds": np.linspace(10.0, 50.0, 80),
                "device": ["phone"] * 60 + ["tablet"] * 20,
                "event_id": [f"f{i}" for i in range(80)],
            }
        ),
    }
    statistics = {name: tfdv.generate_statistics_from_dataframe(f) for name, f in frames.items()}
    page = render(statistics, {"impressions": list(frames)}, [], [], {}, [], "2026-01-15")
    charts = [ElementTree.fromstring(chart) for chart in re.findall(r"<svg .*?</svg>", page, re.S)]
    titles = [chart.find("{http://www.w3.org/2000/svg}title").text for chart in charts]
    assert titles == ["watch_seconds", "device"]
    for chart in charts:
        texts = [t.text for t in chart.iter("{http://www.w3.org/2000/svg}text")]
        assert {"train_events", "eval_events"} <= set(texts)
    histogram_labels = [t.text for t in charts[0].iter("{http://www.w3.org/2000/svg}text")]
    assert "0" in histogram_labels and "50" in histogram_labels  # the range of both datasets
    bars = [t.text for t in charts[1].iter("{http://www.w3.org/2000/svg}text")]
    assert {"phone", "tv", "tablet"} <= set(bars)
    assert "event_id" in page and "https://" not in page
