import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from components.ingest.ingest import DAY, Window, ingest, resolve_window, split_events
from recsys.tables import DataError, read_dataset, read_raw_table, to_unix_seconds

TABLES = ["train_events", "eval_events", "users", "items", "user_features", "item_features"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 40 * DAY), min_size=1, max_size=200),
       st.integers(2, 20), st.integers(1, 19))
def test_split_is_by_time_and_loses_no_row(offsets, lookback, eval_days):
    eval_days = min(eval_days, lookback - 1)
    as_of = 30 * DAY
    events = pd.DataFrame({"event_id": [f"e{i}" for i in range(len(offsets))],
                           "event_ts": np.array(offsets, dtype=np.int64)})
    window = Window(as_of, lookback, eval_days)
    try:
        train, evaluation, counts = split_events(events, window)
    except DataError as error:
        assert "window" in str(error)
        return
    assert (train["event_ts"] >= window.start).all()
    assert (train["event_ts"] < window.eval_start).all()
    assert (evaluation["event_ts"] >= window.eval_start).all()
    assert (evaluation["event_ts"] < as_of).all()
    assert len(train) + len(evaluation) + counts["impressions_before_window"] \
        + counts["impressions_at_or_after_as_of"] == len(events)


def test_default_as_of_is_midnight_after_newest_event():
    ts = pd.Series([5 * DAY + 100, 9 * DAY + 3600])
    assert resolve_window("", 7, 2, ts).as_of == 10 * DAY
    assert resolve_window("1970-01-04", 7, 2, ts).as_of == 3 * DAY
    with pytest.raises(DataError, match="eval_days"):
        resolve_window("", 3, 3, ts)
    with pytest.raises(DataError, match="not a date"):
        resolve_window("yesterday-ish", 7, 2, ts)


def test_ingest_writes_every_table_and_drops_future_snapshots(tiny_data, tmp_path):
    outputs = {name: str(tmp_path / name) for name in TABLES}
    counts = ingest(tiny_data, "", 10, 3, outputs)
    train, evaluation = read_dataset(outputs["train_events"]), read_dataset(outputs["eval_events"])
    assert len(train) == counts["train_events"] > 0
    assert len(evaluation) == counts["eval_events"] > 0
    assert train["event_ts"].max() < counts["eval_start"] <= evaluation["event_ts"].min()
    assert train["event_ts"].dtype == np.int64
    snapshots = read_dataset(outputs["user_features"])
    assert (snapshots["feature_ts"] <= counts["as_of"]).all()
    # The tiny data has a snapshot stamped exactly at as_of (serving uses it), none later.
    assert counts["user_features_after_as_of"] == 0


def test_csv_with_iso_timestamps_reads_like_parquet(tiny_data, tmp_path):
    parquet = read_raw_table(tiny_data, "impressions")
    raw = pd.read_parquet(f"{tiny_data}/impressions.parquet")
    raw["event_ts"] = raw["event_ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    raw.to_csv(tmp_path / "impressions.csv", index=False)
    pd.testing.assert_frame_equal(read_raw_table(str(tmp_path), "impressions"), parquet)


def test_missing_column_names_file_and_columns(tiny_data, tmp_path):
    frame = pd.read_parquet(f"{tiny_data}/impressions.parquet").drop(columns=["clicked"])
    frame.to_parquet(tmp_path / "impressions.parquet")
    with pytest.raises(DataError, match=r"impressions.parquet: missing required column\(s\) \['clicked'\]"):
        read_raw_table(str(tmp_path), "impressions")


def test_missing_table_and_bad_timestamps_are_explained(tmp_path):
    with pytest.raises(DataError, match="raw table 'users' not found"):
        read_raw_table(str(tmp_path), "users")
    with pytest.raises(DataError, match=r"'event_ts' has 2 value\(s\) that are not timestamps"):
        to_unix_seconds(pd.Series(["2026-01-01T00:00:00Z", "soon", "later"]), "x.csv", "event_ts")
