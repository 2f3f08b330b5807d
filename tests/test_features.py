import os

import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow_transform as tft
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.components.features.beam_asof import FeatureView, join_view
from recsys.components.features.transform import history_has_item
from recsys.core.contracts import WATCHED_ITEMS
from recsys.core.features import load_registry
from recsys.core.tables import read_dataset

keys = st.sampled_from(["a", "b", "c", "d"])
timestamps = st.integers(0, 40)


def oracle(events, features):
    """Brute force: newest row with the same key and feature_ts <= event_ts; among
    equal feature_ts the one given last."""
    values, missing = [], []
    for _, event in events.iterrows():
        rows = features[
            (features["user_id"] == event["user_id"])
            & (features["feature_ts"] <= event["event_ts"])
        ]
        if rows.empty:
            values.append(0.0)
            missing.append(1)
        else:
            newest = rows[rows["feature_ts"] == rows["feature_ts"].max()]
            values.append(float(newest["value"].iloc[-1]))
            missing.append(0)
    return np.array(values, dtype=np.float32), np.array(missing)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.tuples(keys, timestamps), min_size=1, max_size=30),
    st.lists(st.tuples(keys, timestamps), min_size=0, max_size=30),
)
def test_point_in_time_join_matches_brute_force(event_rows, feature_rows):
    events = pd.DataFrame(event_rows, columns=["user_id", "event_ts"])
    events["event_id"] = [f"e{i}" for i in range(len(events))]
    features = pd.DataFrame(feature_rows, columns=["user_id", "feature_ts"])
    features["value"] = np.arange(1, len(features) + 1, dtype=float)
    # Sentinels one tick after the newest event must never be picked.
    sentinels = pd.DataFrame(
        {"user_id": ["a", "b", "c", "d"], "feature_ts": events["event_ts"].max() + 1, "value": -1.0}
    )
    features = pd.concat([features, sentinels], ignore_index=True)
    view = FeatureView("view", "user_id", ("value",))
    joined = join_view(
        pa.Table.from_pandas(events, preserve_index=False),
        pa.Table.from_pandas(features, preserve_index=False),
        view,
    ).to_pandas()
    expected_values, expected_missing = oracle(events, features)
    assert len(joined) == len(events)
    assert joined["event_id"].tolist() == events["event_id"].tolist()
    np.testing.assert_array_equal(joined["value"].to_numpy(np.float32), expected_values)
    np.testing.assert_array_equal(joined[view.missing_flag].to_numpy(), expected_missing)
    assert (joined["value"] != -1.0).all()


def test_examples_keep_every_event_and_flag_missing_features(stages):
    paths, counts = stages["paths"], stages["counts"]
    train = read_dataset(paths["train_examples"])
    events = read_dataset(paths["train_events"])
    assert len(train) == counts["train_events"]
    assert train["event_id"].is_unique  # never duplicated, never dropped:
    assert set(train["event_id"]) == set(events["event_id"])
    # The generator drops ~3% of snapshots, so some events fall back or miss.
    assert set(train["user_features_missing"].unique()) <= {0, 1}
    assert train["hour_of_day"].between(0, 23).all()


def test_transform_is_analyzed_on_train_only(stages):
    paths = stages["paths"]
    output = tft.TFTransformOutput(paths["transform_graph"])
    vocabulary = set(output.vocabulary_by_name("item_id"))
    train_items = set(read_dataset(paths["train_examples"])["item_id"].astype(str))
    assert {v.decode() for v in vocabulary} == train_items
    transformed = read_dataset(paths["transformed_train"])
    assert len(transformed) == stages["counts"]["train_events"]
    # z-scored on train: mean ~0, std ~1
    column = transformed["user_impressions_7d_z"]
    assert abs(column.mean()) < 1e-3 and abs(column.std() - 1) < 1e-2
    out_of_vocabulary = output.vocabulary_size_by_name("item_id")  # first OOV bucket
    eval_only = set(read_dataset(paths["eval_examples"])["item_id"]) - train_items
    transformed_eval = read_dataset(paths["transformed_eval"])
    raw_eval = read_dataset(paths["eval_examples"])
    is_eval_only = raw_eval["item_id"].isin(eval_only).to_numpy()
    assert (transformed_eval.loc[is_eval_only, "item_id_idx"] == out_of_vocabulary).all()
    assert (transformed_eval.loc[~is_eval_only, "item_id_idx"] < out_of_vocabulary).all()


def test_serving_snapshots_use_latest_known_features(stages):
    paths, as_of = stages["paths"], stages["counts"]["as_of"]
    user_rows = read_dataset(paths["user_snapshot"])
    item_rows = read_dataset(paths["item_snapshot"])
    registry = load_registry()
    assert list(user_rows.columns) == [*registry.side("user"), WATCHED_ITEMS]
    assert list(item_rows.columns) == registry.side("item")
    features = read_dataset(paths["user_features"])
    newest = features.sort_values("feature_ts").groupby("user_id").last()
    some_user = user_rows[user_rows["user_features_missing"] == 0].iloc[0]
    assert newest.loc[some_user["user_id"], "feature_ts"] <= as_of
    assert np.isclose(
        newest.loc[some_user["user_id"], "user_clicks_7d"], some_user["user_clicks_7d"]
    )
    assert len(item_rows) == len(read_dataset(paths["items"]))
    # Each user's history at as_of: their last clicks, newest first (brute force).
    events = pd.concat([read_dataset(paths["train_events"]), read_dataset(paths["eval_events"])])
    clicks = events[events["clicked"] == 1].sort_values(["event_ts", "event_id"])
    length = stages["join_counts"]["history_length"]
    for _, user in user_rows.sample(50, random_state=0).iterrows():
        mine = clicks[clicks["user_id"] == user["user_id"]]
        assert user["user_history_count"] == len(mine)
        newest_first = mine["item_id"].to_numpy()[::-1][:length]
        # Clicks within the same second may come in either order.
        assert sorted(user["user_history_items"]) == sorted(newest_first)
        # Watched: every item clicked before as_of (the sample spans less than the
        # horizon), each once, however long the history.
        assert sorted(user[WATCHED_ITEMS]) == sorted(mine["item_id"].unique())


def test_history_holds_only_earlier_engagements(stages):
    """Brute force over the stage's output: each example's history is its user's
    clicked items strictly before the event, newest first, with the exact count."""
    paths = stages["paths"]
    events = pd.concat([read_dataset(paths["train_events"]), read_dataset(paths["eval_events"])])
    clicks = events.loc[events["clicked"] == 1, ["user_id", "event_ts", "item_id"]]
    for split in ("train_examples", "eval_examples"):
        examples = read_dataset(paths[split])
        pairs = examples[["event_id", "user_id", "event_ts"]].merge(
            clicks, on="user_id", suffixes=("", "_click")
        )
        earlier = pairs[pairs["event_ts_click"] < pairs["event_ts"]]
        expected_count = earlier.groupby("event_id").size()
        got_count = examples.set_index("event_id")["user_history_count"]
        np.testing.assert_array_equal(
            got_count.to_numpy(), expected_count.reindex(got_count.index, fill_value=0)
        )
        lengths = examples["user_history_items"].map(len).to_numpy()
        np.testing.assert_array_equal(lengths, np.minimum(examples["user_history_count"], 10))
        listed = (
            examples[["event_id", "user_history_items"]]
            .explode("user_history_items")
            .dropna()
            .rename(columns={"user_history_items": "item_id"})
        )
        known = listed.merge(
            earlier[["event_id", "item_id"]].drop_duplicates(),
            on=["event_id", "item_id"],
            how="left",
            indicator=True,
        )
        assert (known["_merge"] == "both").all()  # each listed item: an earlier click
    assert (examples["user_history_count"] > 0).mean() > 0.5  # the sample has histories


def test_generated_serving_log_has_the_history_the_join_gives(stages, tiny_data):
    """The sample data's serving log records each impression's history as serving
    saw it; the window covers every generated day, so it equals the training join's."""
    paths = stages["paths"]
    examples = pd.concat(
        [read_dataset(paths["train_examples"]), read_dataset(paths["eval_examples"])]
    ).set_index("event_id")
    serving = pd.read_parquet(os.path.join(tiny_data, "serving_log.parquet")).set_index("event_id")
    shared = serving.index.intersection(examples.index)
    assert len(shared) == len(serving) > 0
    for column in ("user_history_count", "user_history_mean_watch_seconds"):
        np.testing.assert_allclose(
            serving.loc[shared, column], examples.loc[shared, column], rtol=1e-5
        )
    assert (
        serving.loc[shared, "user_history_items"].map(list)
        == examples.loc[shared, "user_history_items"].map(list)
    ).all()


def test_history_has_item_marks_rows_whose_item_is_in_their_history():
    import tensorflow as tf

    history = tf.sparse.from_dense(tf.constant([["a", "b", ""], ["", "", ""], ["c", "x", "a"]]))
    items = tf.constant(["b", "a", "a"])
    np.testing.assert_array_equal(history_has_item(history, items).numpy(), [1.0, 0.0, 1.0])
