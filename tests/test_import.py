"""`recsys import`: plain files in several layouts to raw tables, schemas, a feature
registry with what is switched off and why, and a window; then the imported data
through ingest -> join -> validate with what the importer wrote (no anomaly)."""

import os

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.app import cli
from recsys.app.data_check import check_span
from recsys.app.importer import MappingError, import_data, load_mapping, propose_window
from recsys.app.local_run import data_config
from recsys.core.aggregates import TRAILING_DAYS, daily_view
from recsys.core.contracts import ITEM_FEATURES, UNKNOWN, USER_FEATURES
from recsys.core.features import load_registry

DAY = 86_400
T0 = 1_700_006_400  # 2023-11-15 00:00 UTC


def interactions(users=40, items=25, days=12, seed=3) -> pd.DataFrame:
    """A small log: every user rates a few items a day, ratings 1-5."""
    rng = np.random.default_rng(seed)
    n = users * days * 3
    return pd.DataFrame(
        {
            "uid": rng.integers(1, users + 1, n),
            "iid": rng.integers(100, 100 + items, n),
            "stars": rng.integers(1, 6, n),
            "when": T0 + np.sort(rng.integers(0, days * DAY, n)),
        }
    )


@pytest.fixture()
def spreadsheet_layout(tmp_path):
    """String ids, ISO-8601 times, ';' separators and a byte-order mark (a spreadsheet
    export), a 0/1 label column, items with multi-valued genres and a creator, users
    with a numeric attribute that has gaps."""
    log = interactions()
    log["user"] = "user-" + log.pop("uid").astype(str)
    log["video"] = "v" + log.pop("iid").astype(str)
    log["time"] = pd.to_datetime(log.pop("when"), unit="s", utc=True).dt.strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    log["liked"] = (log.pop("stars") >= 4).astype(int)
    (tmp_path / "log.csv").write_bytes(b"\xef\xbb\xbf" + log.to_csv(sep=";", index=False).encode())
    items = pd.DataFrame({"video": sorted(set(log["video"]))})
    items["genres"] = np.where(np.arange(len(items)) % 3 == 0, "Comedy|Drama", "Action")
    items["channel"] = [f"c{i % 4}" for i in range(len(items))]
    items.to_csv(tmp_path / "videos.csv", index=False)
    users = pd.DataFrame({"user": sorted(set(log["user"]))})
    users["plan"] = np.where(np.arange(len(users)) % 2 == 0, "free", "paid")
    users["age"] = np.where(np.arange(len(users)) % 5 == 0, np.nan, 30.0)
    users.to_csv(tmp_path / "members.csv", index=False)
    (tmp_path / "mapping.yaml").write_text(
        yaml.safe_dump(
            {
                "interactions": {
                    "path": "log.csv",
                    "user": "user",
                    "item": "video",
                    "timestamp": "time",
                    "label": "liked",
                },
                "items": {
                    "path": "videos.csv",
                    "id": "video",
                    "separator": "|",
                    "category": "genres",
                    "creator": "channel",
                },
                "users": {"path": "members.csv", "id": "user", "attributes": ["plan", "age"]},
            }
        )
    )
    return tmp_path / "mapping.yaml", log


@pytest.mark.trains
def test_spreadsheet_layout_with_attributes(spreadsheet_layout, tmp_path):
    mapping, log = spreadsheet_layout
    out = tmp_path / "raw"
    result = import_data(load_mapping(str(mapping)), str(out))
    assert result.counts == {"impressions": len(log), "users": 40, "items": 25}
    events = pd.read_parquet(out / "impressions.parquet")
    assert set(events["user_id"]) == set(log["user"])  # the BOM did not rename the column
    assert (events["event_ts"] == pd.to_datetime(log["time"])).all()
    items = pd.read_parquet(out / "items.parquet").set_index("item_id")
    assert set(items["category"]) == {"Comedy", "Action"}  # the primary (first) genre
    assert items["creator_id"].str.startswith("c").all()
    registry = load_registry(str(out / "schemas"))
    assert registry.role("category") == "category" and registry.role("creator") == "creator_id"
    assert registry["plan"].transform == "vocabulary" and registry["plan"].entity == "user"
    # age has empty cells: switched off, not filled in
    assert "age" not in registry and "empty cell" in registry.switched_off["age"]
    assert registry.switched_off["country"] == "the users mapping names no column for it"
    assert "item_age_days" in registry.switched_off  # no upload time given
    assert "no watch time" in registry.switched_off["user_watch_seconds_7d"]
    # A 0/1 label column: an impression is only an exposure, the watched rule reads clicks.
    assert "watched_from" not in yaml.safe_load((out / "recsys.yaml").read_text())
    # The written schemas pass the data they were written for: no anomaly blocks.
    checked = check_span(str(out), str(tmp_path / "check"), data_config(str(out)))
    assert checked["validate"]["anomalies"] == []
    assert checked["ingest"]["quarantined"] == 0
    assert checked["ingest"]["user_features_derived"] == 1


@pytest.mark.trains
def test_interactions_alone_with_integer_ids_in_milliseconds(tmp_path):
    """Parquet with integer ids and epoch milliseconds, label by a rule; no other
    file: ingest derives users, items and both feature views from the log."""
    log = interactions(seed=5)
    log["when"] = log["when"] * 1000
    log.to_parquet(tmp_path / "log.parquet")
    out = tmp_path / "raw"
    code = cli.main(
        [
            "import",
            "--out",
            str(out),
            "--interactions",
            str(tmp_path / "log.parquet"),
            "--user",
            "uid",
            "--item",
            "iid",
            "--timestamp",
            "when",
            "--label",
            "stars >= 4",
        ]
    )
    assert code == 0
    events = pd.read_parquet(out / "impressions.parquet")
    assert set(events["user_id"]) == set(log["uid"].astype(str))  # 7, not 7.0 or u7
    assert (events["event_ts"].astype("int64") // 10**9 == log["when"] // 1000).all()
    assert (events["clicked"] == (log["stars"] >= 4)).all()
    assert sorted(os.listdir(out)) == ["impressions.parquet", "recsys.yaml", "schemas"]
    registry = load_registry(str(out / "schemas"))
    for name in ("country", "device", "category", "creator_id", "duration_s", "item_age_days"):
        assert name not in registry and name in registry.switched_off
    assert registry.role("category") is None
    config = yaml.safe_load((out / "recsys.yaml").read_text())
    assert config["lookback_days"] == 12 and 1 <= config["eval_days"] <= 3
    assert config["rerank"] == '{"max_per_creator": 0}'
    assert config["watched_from"] == "impressions"  # a rated item was consumed
    checked = check_span(str(out), str(tmp_path / "check"), data_config(str(out)))
    assert checked["validate"]["anomalies"] == []
    ingested = checked["ingest"]
    for table in ("users", "items", "user_features", "item_features"):
        assert ingested[f"{table}_derived"] == 1
    assert ingested["users"] == log["uid"].nunique()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"label": "rating >= 4"}, "names no column"),
        ({"label": "stars >= 9"}, "makes no interaction an engagement"),
        ({"timestamp_unit": "weeks"}, "timestamp_unit 'weeks'"),
        ({"item": "item_id"}, "no column(s) ['item_id']"),
        ({"colour": "x"}, "unknown key(s) ['colour']"),
    ],
)
def test_mapping_mistakes_are_named(tmp_path, change, message):
    interactions().to_csv(tmp_path / "log.csv", index=False)
    section = {"path": str(tmp_path / "log.csv"), "user": "uid", "item": "iid"}
    section.update({"timestamp": "when", "label": "stars >= 4", **change})
    with pytest.raises(MappingError) as error:
        import_data({"interactions": section}, str(tmp_path / "out"))
    assert message in str(error.value)


def test_cli_names_a_malformed_mapping(tmp_path, capsys):
    (tmp_path / "mapping.yaml").write_text("interactions:\n  user: [uid\n")
    assert cli.main(["import", "--mapping", str(tmp_path / "mapping.yaml"), "--out", "x"]) == 2
    error = capsys.readouterr().err
    assert "mapping.yaml is not valid YAML (line" in error


def test_window_leaves_enough_eval_users():
    """400 users engage on each of 40 days: one eval day already holds more than
    TARGET_EVAL_USERS with history, so one day is proposed."""
    users = np.repeat(np.arange(400), 40)
    days = np.tile(np.arange(40), 400)
    events = pd.DataFrame(
        {
            "user_id": users.astype(str),
            "event_ts": T0 + days * DAY + 3600,
            "clicked": 1,
        }
    )
    assert propose_window(events) == (40, 1, 400)
    # Users who engage once: nobody has both history and eval, and the count says so.
    assert propose_window(events[days == users % 40]) == (40, 1, 0)
    # Half the users engage on the first and the last day only, the other half daily
    # until some day: the eval period stretches back until it reaches the second half,
    # and never past a quarter of the days (10).
    first_half = users < 200
    for last_day, proposed in ((33, (40, 7, 400)), (29, (40, 1, 200))):
        keep = np.where(first_half, days <= last_day, (days == 0) | (days == 39))
        assert propose_window(events[keep]) == proposed


def test_the_window_holds_at_most_max_events_newest_days_first(tmp_path):
    """A log too long for the machine: the newest days that hold at most max_events,
    counted over calendar days (a day without events costs nothing), and the same
    from the written file, read as it streams."""
    days = np.array([0, 0, 0, 5, 5, 6, 7, 7, 8, 9])
    events = pd.DataFrame({"user_id": ["a", "b", "a", "a", "b", "a", "b", "a", "b", "a"]}).assign(
        event_ts=T0 + days * DAY + 60, clicked=1
    )
    assert propose_window(events)[0] == 10  # all days fit
    assert propose_window(events, max_events=7)[0] == 9  # days 1..9: empty days are free
    assert propose_window(events, max_events=6)[0] == 4  # days 6..9 hold 5, with 5: 7
    assert propose_window(events, max_events=1)[0] == 2  # never less than a train and an eval day
    frame = events.assign(event_ts=pd.to_datetime(events["event_ts"], unit="s", utc=True))
    frame.to_parquet(tmp_path / "impressions.parquet")
    assert propose_window(str(tmp_path / "impressions.parquet"), max_events=6)[0] == 4


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 12 * DAY - 1), st.integers(0, 1)),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 5),
)
def test_derived_view_counts_only_the_trailing_days_before_each_snapshot(rows, first_day):
    """Each row of a derived view equals its definition computed naively: the
    entity's events in [feature_ts - 7 days, feature_ts), nothing at or after it."""
    events = pd.DataFrame(rows, columns=["user_id", "offset", "clicked"])
    events["event_ts"] = T0 + events["offset"]
    events["user_id"] = events["user_id"].astype(str)
    events["watch_seconds"] = events["clicked"] * 30.0
    ids = sorted(events["user_id"].unique())
    first_ts = T0 + first_day * DAY
    view = daily_view(events, USER_FEATURES, ids, first_ts, 6)
    for row in view.itertuples():
        mine = events[
            (events["user_id"] == row.user_id)
            & (events["event_ts"] < row.feature_ts)
            & (events["event_ts"] >= row.feature_ts - TRAILING_DAYS * DAY)
        ]
        assert row.user_impressions_7d == len(mine)
        assert row.user_clicks_7d == mine["clicked"].sum()
        assert row.user_watch_seconds_7d == mine["watch_seconds"].sum()
    items = events.rename(columns={"user_id": "item_id"})
    item_view = daily_view(items, ITEM_FEATURES, ids, first_ts, 6)
    expected = (item_view["item_clicks_7d"] + 2) / (item_view["item_impressions_7d"] + 20)
    assert np.allclose(item_view["item_ctr_7d"], expected, atol=1e-5)


def test_unknown_attribute_values_stay_unknown(tmp_path):
    log = interactions()
    log.to_csv(tmp_path / "log.csv", index=False)
    pd.DataFrame({"iid": [100, 101], "genre": ["", "Jazz"], "studio": [7, 9]}).to_parquet(
        tmp_path / "items.parquet"
    )
    import_data(
        {
            "interactions": {
                "path": str(tmp_path / "log.csv"),
                "user": "uid",
                "item": "iid",
                "timestamp": "when",
                "label": "stars >= 4",
            },
            "items": {
                "path": str(tmp_path / "items.parquet"),
                "id": "iid",
                "category": "genre",
                "creator": "studio",  # integer ids: still ids, as text
            },
        },
        str(tmp_path / "out"),
    )
    items = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert items["category"].tolist() == [UNKNOWN, "Jazz"]
    assert items["creator_id"].tolist() == ["7", "9"]
    assert load_registry(str(tmp_path / "out" / "schemas"))["creator_id"].dtype == "string"
