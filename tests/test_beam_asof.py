"""The Beam point-in-time joins: equal to the in-process join under both strategies
and both DirectRunner modes, equal to DuckDB's ASOF LEFT JOIN, and guarded: an
injected bug stops the run naming the view and an event."""

import functools
import glob
import json

import apache_beam as beam
import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from recsys.components.features import beam_asof, join
from recsys.components.features.asof import AsOfIndex
from recsys.components.features.beam_asof import (
    AsOfJoin,
    CheckRowCounts,
    FeatureView,
    HistoryJoin,
    HistoryView,
    SharedRows,
    join_history,
    join_view,
)
from recsys.components.features.config import JoinConfig
from recsys.components.features.join import join_features, read_rows
from recsys.core.beam_io import ReadDataset, pipeline_options
from recsys.core.contracts import (
    EVAL_EXAMPLES,
    ITEM_SNAPSHOT,
    JOIN_INPUTS,
    TRAIN_EXAMPLES,
    USER_SNAPSHOT,
)
from recsys.core.features import load_registry
from recsys.core.spill import stable_buckets
from recsys.core.tables import read_dataset

USER_FEATURE_COLUMNS = [f.name for f in load_registry().select(source="user_features")]
VIEW = FeatureView("user_features", "user_id", tuple(USER_FEATURE_COLUMNS))
JOINED = [TRAIN_EXAMPLES, EVAL_EXAMPLES, USER_SNAPSHOT, ITEM_SNAPSHOT]
MULTI_PROCESSING = '["--direct_num_workers=2", "--direct_running_mode=multi_processing"]'


def beam_join(events_dir, features_dir, out, args, broadcast, view=VIEW):
    """AsOfJoin alone, with small batches and buckets so every path is exercised."""
    with beam.Pipeline(options=pipeline_options(args)) as pipeline:
        sides = {"events": pipeline | "ReadEvents" >> ReadDataset(events_dir, batch_size=500)}
        if broadcast:  # each worker reads the feature rows from the files
            rows = SharedRows(functools.partial(read_rows, features_dir))
            joined = sides | AsOfJoin(view, shared_rows=rows)
        else:
            sides["features"] = pipeline | "ReadFeatures" >> ReadDataset(features_dir, 700)
            joined = sides | AsOfJoin(view, num_buckets=8, event_splits=3)
        _ = {"input": sides["events"], "output": joined} | CheckRowCounts("test join")
        schema = _output_schema(events_dir, features_dir, view)
        # A group without feature rows cannot know their types: cast as any sink would.
        _ = (
            joined
            | beam.Map(lambda table: table.cast(schema)).with_output_types(pa.Table)
            | beam.io.WriteToParquetBatched(
                out + "/part", schema=schema, file_name_suffix=".parquet"
            )
        )
    return pd.concat([pq.read_table(f).to_pandas() for f in glob.glob(out + "/*.parquet")])


def _output_schema(events_dir, features_dir, view):
    events = pq.read_schema(glob.glob(events_dir + "/*.parquet")[0])
    features = pq.read_schema(glob.glob(features_dir + "/*.parquet")[0])
    fields = list(events) + [features.field(c) for c in view.columns]
    return pa.schema(fields + [pa.field(view.missing_flag, pa.int64())])


def in_memory_join(paths, view=VIEW):
    return join_view(
        pq.read_table(paths["train_events"]), pq.read_table(paths["user_features"]), view
    ).to_pandas()


@pytest.mark.parametrize("broadcast", [False, True], ids=["bucket", "broadcast"])
@pytest.mark.parametrize("args", ["[]", MULTI_PROCESSING], ids=["in-memory", "multi-processing"])
def test_beam_join_equals_in_memory_join(stages, tmp_path, args, broadcast):
    paths = stages["paths"]
    expected = in_memory_join(paths)
    got = beam_join(paths["train_events"], paths["user_features"], str(tmp_path), args, broadcast)
    assert len(got) == len(expected) and got["event_id"].is_unique  # never drop or duplicate
    got = got.set_index("event_id").loc[expected["event_id"]].reset_index()
    pd.testing.assert_frame_equal(got[expected.columns], expected)


@pytest.mark.parametrize("broadcast", [False, True], ids=["bucket", "broadcast"])
def test_beam_history_equals_in_memory_history(stages, tmp_path, broadcast):
    paths = stages["paths"]
    view = HistoryView(length=5)
    events = pq.read_table(paths["train_events"])
    clicks = events.filter(pc.equal(events.column("clicked"), 1)).select(
        ["user_id", "event_ts", "item_id", "watch_seconds"]
    )
    expected = join_history(events, clicks, view).to_pandas()
    with beam.Pipeline() as pipeline:
        sides = {"events": pipeline | "Events" >> beam.Create(events.to_batches(max_chunksize=700))}
        if broadcast:
            joined = sides | HistoryJoin(view, shared_rows=SharedRows(lambda: clicks))
        else:
            sides["features"] = pipeline | "Clicks" >> beam.Create(clicks.to_batches(300))
            joined = sides | HistoryJoin(view, num_buckets=8, event_splits=3)
        _ = (
            joined
            | beam.Map(lambda table: table.to_pandas())
            | beam.combiners.ToList()
            | beam.Map(lambda frames: pd.concat(frames).to_pickle(str(tmp_path / "got.pkl")))
        )
    got = pd.read_pickle(tmp_path / "got.pkl")
    assert len(got) == len(expected) and got["event_id"].is_unique
    got = got.set_index("event_id").loc[expected["event_id"]].reset_index()
    for column in expected.columns:
        assert got[column].map(repr).tolist() == expected[column].map(repr).tolist(), column


def join_stage(stages, out, beam_args: str, config: JoinConfig = JoinConfig()) -> dict:
    """The join stage on the shared run's inputs, with these Beam options; its outputs."""
    outputs = {name: str(out / name) for name in JOINED}
    join_features(
        {name: stages["paths"][name] for name in JOIN_INPUTS},
        stages["counts"]["as_of"],
        "",
        outputs,
        config,
        beam_pipeline_args=beam_args,
    )
    return outputs


def test_join_stage_is_the_same_on_multi_processing(stages, tmp_path):
    paths = stages["paths"]
    outputs = join_stage(stages, tmp_path, MULTI_PROCESSING)
    for split in ("train_examples", "eval_examples"):
        expected = read_dataset(paths[split]).sort_values("event_id", ignore_index=True)
        got = read_dataset(outputs[split]).sort_values("event_id", ignore_index=True)
        pd.testing.assert_frame_equal(got, expected)


def test_a_bucketed_history_on_the_direct_runner_is_the_same_and_says_what_it_holds(
    stages, tmp_path, monkeypatch, capfd
):
    monkeypatch.setattr(join, "HISTORY_BROADCAST_MAX_ROWS", 0)
    outputs = join_stage(stages, tmp_path, "[]")
    said = capfd.readouterr().err
    assert "joining the history (" in said and "engagements) in hash buckets" in said
    assert "DirectRunner holds those buckets" in said and "distributed runner" in said
    assert "user_features" not in said.split("in hash buckets")[0]  # the views broadcast
    for split in ("train_examples", "eval_examples"):
        expected = read_dataset(stages["paths"][split]).sort_values("event_id", ignore_index=True)
        got = read_dataset(outputs[split]).sort_values("event_id", ignore_index=True)
        pd.testing.assert_frame_equal(got, expected)


def test_equals_duckdb_asof_left_join(stages):
    """DuckDB's ASOF LEFT JOIN on the same files: the same feature values, NULL
    exactly where the join flags the features missing. (The generated snapshots
    have one row per user and day, so there are no ties for DuckDB to break.)"""
    paths = stages["paths"]
    features = read_dataset(paths["user_features"])
    assert not features.duplicated(["user_id", "feature_ts"]).any()
    columns = ", ".join(f"f.{c}" for c in USER_FEATURE_COLUMNS)
    expected = duckdb.sql(f"""
        SELECT e.event_id, {columns}
        FROM read_parquet('{paths["train_events"]}/*.parquet') e
        ASOF LEFT JOIN read_parquet('{paths["user_features"]}/*.parquet') f
        ON e.user_id = f.user_id AND e.event_ts >= f.feature_ts
        ORDER BY e.event_id""").df()
    examples = read_dataset(paths["train_examples"]).sort_values("event_id", ignore_index=True)
    assert examples["event_id"].tolist() == expected["event_id"].tolist()
    missing = examples["user_features_missing"].to_numpy() == 1
    assert 0 < missing.sum() < len(examples)  # both cases occur in the sample
    for column in USER_FEATURE_COLUMNS:
        theirs = expected[column].astype("float64").to_numpy()
        np.testing.assert_array_equal(np.isnan(theirs), missing)
        np.testing.assert_allclose(
            examples[column].to_numpy(float)[~missing], theirs[~missing], rtol=1e-6
        )


def test_ttl_option_against_brute_force(stages, tmp_path):
    """With ttl_days, an event has user features exactly when a snapshot of its user
    lies in [event_ts - ttl, event_ts]."""
    paths = stages["paths"]
    outputs = {name: str(tmp_path / name) for name in JOINED}
    ttl = 0.5 * 86_400
    counts = join_features(
        {name: paths[name] for name in JOIN_INPUTS},
        stages["counts"]["as_of"],
        "",
        outputs,
        JoinConfig(
            feature_views=json.dumps(
                {"user_features": {"ttl_days": 0.5, "defaults": {"user_clicks_7d": -1}}}
            )
        ),
    )
    examples = read_dataset(outputs["train_examples"])
    pairs = examples[["event_id", "user_id", "event_ts"]].merge(
        read_dataset(paths["user_features"]), on="user_id"
    )
    fresh = pairs[
        (pairs["feature_ts"] <= pairs["event_ts"])
        & (pairs["feature_ts"] >= pairs["event_ts"] - ttl)
    ]
    has_fresh = examples["event_id"].isin(fresh["event_id"]).to_numpy()
    missing = examples["user_features_missing"].to_numpy() == 1
    np.testing.assert_array_equal(missing, ~has_fresh)
    assert counts["train_user_features_missing"] > stages["counts"].get(
        "train_user_features_missing", 0
    )
    assert (examples.loc[missing, "user_clicks_7d"] == -1).all()  # the view's default


def test_created_before_event_keeps_late_backfills_out(tmp_path):
    """A row whose feature_ts is before the event but that was written after it is
    used only without the option; ties on feature_ts go to the latest created_ts."""
    events = pa.table({"event_id": ["e1", "e2"], "user_id": ["u", "u"], "event_ts": [100, 300]})
    features = pa.table(
        {
            "user_id": ["u", "u", "u"],
            "feature_ts": [50, 90, 90],
            "created_ts": [50, 250, 240],
            "value": [1.0, 2.0, 3.0],
        }
    )
    plain = FeatureView("v", "user_id", ("value",))
    strict = FeatureView("v", "user_id", ("value",), created_before_event=True)
    assert join_view(events, features, plain).column("value").to_pylist() == [2.0, 2.0]
    assert join_view(events, features, strict).column("value").to_pylist() == [1.0, 2.0]


def test_injected_lookup_bug_stops_the_run_naming_view_and_event(stages, tmp_path, monkeypatch):
    correct = AsOfIndex.lookup

    def off_by_one(self, event_keys, event_ts):  # picks the next row: a future snapshot
        chosen = correct(self, event_keys, event_ts)
        return np.where(chosen >= 0, np.minimum(chosen + 1, len(self.feature_ts) - 1), chosen)

    monkeypatch.setattr(AsOfIndex, "lookup", off_by_one)
    paths = stages["paths"]
    with pytest.raises(
        Exception,
        match=r"feature view 'user_features'.*point-in-time rule.*"
        r"e\.g\. event \{'event_id'",
    ):
        beam_join(paths["train_events"], paths["user_features"], str(tmp_path), "[]", True)


def test_injected_bucketing_bug_fails_the_row_count_check(stages, tmp_path, monkeypatch):
    split = beam_asof.split_by_bucket

    def drop_group_three(batch, key, num_buckets, splits=1):
        return (
            (group, rows) for group, rows in split(batch, key, num_buckets, splits) if group != 3
        )

    monkeypatch.setattr(beam_asof, "split_by_bucket", drop_group_three)
    paths = stages["paths"]
    with pytest.raises(Exception, match=r"test join: \d+ events in, \d+ rows out"):
        beam_join(paths["train_events"], paths["user_features"], str(tmp_path), "[]", False)


def test_feature_view_options_are_checked(stages, tmp_path):
    paths = stages["paths"]
    inputs = {name: paths[name] for name in JOIN_INPUTS}
    outputs = {name: str(tmp_path / name) for name in JOINED}
    as_of = stages["counts"]["as_of"]
    for config, message in [
        ('{"user_feature": {}}', "unknown view 'user_feature'"),
        ('{"user_features": {"ttl": 3}}', r"unknown option\(s\) \['ttl'\]"),
        ('{"user_features": {"ttl_days": 0}}', "ttl_days must be positive"),
        ('{"item_features": {"join": "hash"}}', "join must be one of"),
        ('{"user_features": {"defaults": {"clicks": 0}}}', "defaults for unknown column"),
        ('{"user_features": {"created_before_event": true}}', "has no created_ts column"),
    ]:
        with pytest.raises(ValueError, match=message):
            join_features(inputs, as_of, "", outputs, JoinConfig(feature_views=config))
    with pytest.raises(ValueError, match="history_length must be between 1 and 50"):
        join_features(inputs, as_of, "", outputs, JoinConfig(history_length=51))


def test_buckets_are_stable_and_spread():
    keys = pa.array([f"u{i:06d}" for i in range(10_000)])
    first, again = (
        stable_buckets(keys, 64),
        stable_buckets(pa.array(keys.to_pylist()[::-1]), 64)[::-1],
    )
    np.testing.assert_array_equal(first, again)
    counts = np.bincount(first, minlength=64)
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


def test_a_hot_key_is_spread_over_the_splits_and_its_features_reach_each():
    batch = pa.record_batch(
        [pa.array(["hot"] * 1000 + ["cold"] * 10), pa.array(np.arange(1010))],
        names=["user_id", "event_ts"],
    )
    groups = dict(beam_asof.split_by_bucket(batch, "user_id", num_buckets=8, splits=4))
    hot_bucket = int(stable_buckets(pa.array(["hot"]), 8)[0])
    hot_groups = {g: rows.num_rows for g, rows in groups.items() if g // 4 == hot_bucket}
    assert len(hot_groups) == 4 and max(hot_groups.values()) <= 250 + 10
    features = pa.record_batch([pa.array(["hot"])], names=["user_id"])
    replicated = [g for g, _ in beam_asof.replicate_to_splits(features, "user_id", 8, 4)]
    assert sorted(replicated) == sorted(hot_groups)
