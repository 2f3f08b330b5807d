import numpy as np
import pandas as pd

from recsys.app.generate import generate
from recsys.core.contracts import RAW_TABLES
from recsys.core.schemas import required_columns


def _read(out, name):
    return pd.read_parquet(f"{out}/{name}.parquet")


def test_same_seed_same_data_and_every_contract_column(tmp_path):
    generate(str(tmp_path / "a"), users=50, items=30, days=4, seed=11)
    generate(str(tmp_path / "b"), users=50, items=30, days=4, seed=11)
    generate(str(tmp_path / "c"), users=50, items=30, days=4, seed=12)
    for name, table in RAW_TABLES.items():
        a, b = _read(tmp_path / "a", name), _read(tmp_path / "b", name)
        assert set(required_columns(table.schema, environment=table.environment)) <= set(
            a.columns
        ), name
        pd.testing.assert_frame_equal(a, b)
    assert not _read(tmp_path / "a", "impressions").equals(_read(tmp_path / "c", "impressions"))


def test_events_are_plausible(tmp_path):
    generate(str(tmp_path), users=80, items=40, days=5, seed=1)
    events = _read(tmp_path, "impressions")
    items = _read(tmp_path, "items").set_index("item_id")
    assert events["event_id"].is_unique
    assert events["event_ts"].is_monotonic_increasing
    duration = items.loc[events["item_id"], "duration_s"].to_numpy()
    assert (events["watch_seconds"].to_numpy() <= duration).all()
    assert (events.loc[events["clicked"] == 0, "watch_seconds"] == 0).all()
    start = pd.Timestamp("2026-01-05", tz="UTC")
    assert events["event_ts"].min() >= start
    assert events["event_ts"].max() < start + pd.Timedelta(days=5)


def test_snapshots_aggregate_only_the_past(tmp_path):
    generate(str(tmp_path), users=40, items=20, days=6, seed=5)
    events = _read(tmp_path, "impressions")
    snapshots = _read(tmp_path, "user_features")
    row = snapshots[snapshots["user_impressions_7d"] > 0].iloc[-1]
    window = events[
        (events["user_id"] == row["user_id"])
        & (events["event_ts"] < row["feature_ts"])
        & (events["event_ts"] >= row["feature_ts"] - pd.Timedelta(days=7))
    ]
    assert row["user_impressions_7d"] == len(window)
    assert row["user_clicks_7d"] == window["clicked"].sum()
    assert np.isclose(row["user_watch_seconds_7d"], window["watch_seconds"].sum(), atol=0.5)
