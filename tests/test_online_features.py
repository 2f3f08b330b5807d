"""The online service's feature updates agree with the training join: a snapshot
row as of ``as_of`` with the later engagements folded in equals the join's row at
a later request time: the history strictly before it, the aggregates the daily
view of its day."""

import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.components.features.beam_asof import HistoryLookup, HistoryView
from recsys.core.aggregates import daily_view, view_aggregates
from recsys.core.contracts import (
    CLICKED,
    EVENT_TS,
    FEATURE_TS,
    ITEM_ID,
    USER_FEATURES,
    USER_ID,
    WATCH_SECONDS,
)
from recsys.core.derived import DAY
from recsys.core.features import HISTORY_COLUMNS
from recsys.core.online_features import EVENT_COLUMNS, apply_events

ITEMS, COUNT, MEAN = HISTORY_COLUMNS
AS_OF = 1_000_000

events = st.lists(
    st.tuples(
        st.integers(AS_OF - 50, AS_OF + 50),  # time
        st.sampled_from(["a", "b", "c", "d", "e"]),  # item
        st.integers(0, 1),  # clicked
        st.integers(0, 600),  # watch seconds
    ),
    max_size=30,
)


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(
        [("u", item, ts, clicked, float(watch)) for ts, item, clicked, watch in rows],
        columns=list(EVENT_COLUMNS),
    ).astype({EVENT_TS: np.int64, CLICKED: np.int64})


def joined_row(engagements: pd.DataFrame, at: int, length: int) -> dict:
    """The training join's history of user u at time ``at``, as a one-row dict."""
    clicked = engagements[engagements[CLICKED] == 1]
    history = pa.Table.from_pandas(
        clicked[[USER_ID, EVENT_TS, ITEM_ID, WATCH_SECONDS]], preserve_index=False
    )
    probe = pa.table({USER_ID: ["u"], EVENT_TS: np.array([at], dtype=np.int64)})
    row = HistoryLookup(HistoryView(length=length), history).join(probe).to_pandas()
    listed = np.empty(1, dtype=object)
    listed[0] = list(row[ITEMS][0])
    return {ITEMS: listed, COUNT: row[COUNT].to_numpy(), MEAN: row[MEAN].to_numpy()}


@settings(max_examples=150, deadline=None)
@given(events, st.integers(1, 6))
def test_folding_later_engagements_in_gives_the_joins_history(rows, length):
    log = frame(rows)
    request_at = AS_OF + 51
    before, after = log[log[EVENT_TS] < AS_OF], log[log[EVENT_TS] >= AS_OF]
    snapshot = joined_row(before, AS_OF, length)
    online = apply_events(snapshot, after, length, request_at)
    truth = joined_row(log, request_at, length)
    assert list(online[ITEMS][0]) == list(truth[ITEMS][0])
    assert online[COUNT][0] == truth[COUNT][0]
    new_clicks = int(after[CLICKED].sum())
    if len(snapshot[ITEMS][0]) + new_clicks <= length:  # no old item fell off the list
        np.testing.assert_allclose(online[MEAN][0], truth[MEAN][0])


MIDNIGHT = 20_000 * DAY


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(MIDNIGHT - 5 * DAY, MIDNIGHT + 2 * DAY),
            st.integers(0, 1),
            st.integers(0, 600),
        ),
        max_size=40,
    ),
    st.integers(MIDNIGHT + 1, MIDNIGHT + 2 * DAY),
)
def test_aggregates_are_the_daily_view_of_the_request_day(rows, at):
    """The user's 7-day aggregates at request time ``at``: the view row of at's
    midnight, as the join gives an event at ``at``; today's events wait for tomorrow."""
    log = frame([(ts, "a", clicked, watch) for ts, clicked, watch in rows])
    view = daily_view(log, USER_FEATURES, ["u"], MIDNIGHT, 3).set_index(FEATURE_TS)
    columns = view_aggregates(USER_FEATURES)
    snapshot = {name: view.loc[[MIDNIGHT], name].to_numpy() for name in columns}
    online = apply_events(snapshot, log[log[EVENT_TS] >= MIDNIGHT], 10, at)
    expected = view.loc[at - at % DAY]
    for name in columns:
        np.testing.assert_allclose(online[name][0], expected[name], err_msg=name)
    assert snapshot == {name: view.loc[[MIDNIGHT], name].to_numpy() for name in columns}
