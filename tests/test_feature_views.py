"""Derived feature views stored as the rows where a value changes: the point-in-time
join reads exactly the features of the dense daily definition at every event, and the
store grows with the events, not with entities x days (a log spanning years)."""

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.app.importer import import_data
from recsys.components.features.beam_asof import FeatureView, ViewLookup
from recsys.components.ingest.config import IngestConfig
from recsys.components.ingest.ingest import ingest
from recsys.core.aggregates import DailySums, daily_view, view_aggregates, view_changes
from recsys.core.contracts import INGEST_OUTPUTS, ITEM_FEATURES, USER_FEATURES
from recsys.core.tables import read_dataset

DAY = 86_400
T0 = 1_700_006_400  # a UTC midnight

events_strategy = st.lists(
    st.tuples(
        st.integers(0, 5),  # entity
        st.integers(-9 * DAY, 30 * DAY),  # time from T0
        st.integers(0, 1),  # clicked
        st.sampled_from([0.0, 0.05, 0.1, 0.15, 12.345, 30.0, 1e-3, 2.5e6]),  # watch seconds
    ),
    min_size=1,
    max_size=80,
)


def lookup(view_name: str, table: pd.DataFrame, probes: pd.DataFrame) -> pd.DataFrame:
    key = "user_id" if view_name == USER_FEATURES else "item_id"
    columns = tuple(view_aggregates(view_name))
    view = FeatureView(view_name, key, columns)
    joined = ViewLookup(view, pa.Table.from_pandas(table, preserve_index=False)).join(
        pa.Table.from_pandas(probes, preserve_index=False)
    )
    return joined.to_pandas()[[*columns, view.missing_flag]]


@settings(max_examples=150, deadline=None)
@given(
    events_strategy,
    st.integers(0, 10),  # window start, days from T0
    st.integers(1, 25),  # midnights in the view
    st.integers(1, 5),  # batches the events arrive in
    st.sampled_from([0, 6 * 3600]),  # the window's time of day
    st.lists(st.integers(-12 * DAY, 40 * DAY), min_size=1, max_size=40),  # probe times
)
def test_change_rows_give_the_dense_views_features_at_every_event(
    rows, start_day, snapshots, batches, phase, probe_times
):
    for view_name, key in ((USER_FEATURES, "user_id"), (ITEM_FEATURES, "item_id")):
        events = pd.DataFrame(rows, columns=[key, "offset", "clicked", "watch_seconds"])
        events[key] = "e" + events[key].astype(str)
        events["event_ts"] = T0 + events["offset"]
        first_ts = T0 + start_day * DAY + phase
        ids = np.sort(events[key].unique())
        dense = daily_view(events, view_name, ids, first_ts, snapshots)
        sums = DailySums(view_name, phase=phase)
        for part in np.array_split(events.sample(frac=1, random_state=len(rows)), batches):
            sums.add(part)
        changes = view_changes(sums, ids, first_ts, snapshots)
        assert len(changes) <= len(ids) + 2 * len(events)
        # Every change row is a row of the dense view, values and all.
        merged = changes.merge(dense, on=[key, "feature_ts"], how="left", suffixes=("", "_d"))
        for column in view_aggregates(view_name):
            np.testing.assert_array_equal(merged[column], merged[f"{column}_d"], err_msg=column)
        probes = pd.DataFrame(
            {
                key: np.resize(np.append(ids, "unknown"), len(probe_times)),
                "event_ts": T0 + np.asarray(probe_times, dtype=np.int64),
            }
        )
        pd.testing.assert_frame_equal(
            lookup(view_name, changes, probes), lookup(view_name, dense, probes)
        )


def test_a_log_spanning_years_derives_rows_per_event_day_not_per_entity_day(tmp_path):
    """15 years of a few thousand interactions through `recsys import` and ingest: the
    derived views hold at most a start row per entity and two rows per entity and day
    with events, where the dense views would hold one per entity and day."""
    rng = np.random.default_rng(27)
    n, users, items, years = 6_000, 200, 400, 15
    start = T0 - years * 365 * DAY
    pd.DataFrame(
        {
            "user": rng.integers(0, users, n),
            "item": rng.integers(0, items, n),
            "when": np.sort(start + rng.integers(0, years * 365 * DAY, n)),
            "rating": rng.integers(1, 6, n),
        }
    ).to_csv(tmp_path / "log.csv", index=False)
    mapping = {"path": str(tmp_path / "log.csv"), "user": "user", "item": "item"}
    mapping.update(timestamp="when", label="rating >= 4")
    import_data({"interactions": mapping}, str(tmp_path / "raw"))
    outputs = {name: str(tmp_path / "out" / name) for name in INGEST_OUTPUTS}
    lookback = years * 365
    counts = ingest(
        str(tmp_path / "raw"),
        outputs,
        IngestConfig(lookback_days=lookback, eval_days=30),
        str(tmp_path / "raw" / "schemas"),
        batch_rows=1_000,
    )
    for view_name in (USER_FEATURES, ITEM_FEATURES):
        table = read_dataset(outputs[view_name])
        entities = table.iloc[:, 0].nunique()
        assert counts[f"{view_name}_derived"] == 1
        assert len(table) == counts[view_name] <= entities + 2 * n
        assert len(table) < entities * (lookback + 1) / 50  # the dense view, for scale
