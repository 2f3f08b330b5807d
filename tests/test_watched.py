"""The watched rule covers everything a user engaged with in the join's horizon, not
only the model's history: built by the join into the user snapshot, grown online by
the events the service receives, applied by the funnel. A user with thousands of
engagements is the case that broke before (the rule read the last history_length)."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recsys.components.features.join import Watched, watched_items
from recsys.core.contracts import (
    CLICKED,
    EVENT_TS,
    ITEM_ID,
    USER_ID,
    WATCH_SECONDS,
    WATCHED_ITEMS,
)
from recsys.core.derived import DAY
from recsys.core.online_features import apply_events
from recsys.serving import Context, Funnel
from tests.test_funnel import _retrieved, request_time

AT = 1_700_000_000 - 1_700_000_000 % DAY


def engagements(n: int, seed: int = 0) -> pd.DataFrame:
    """One heavy user's ``n`` engagements over two years before AT (items repeat),
    a few after AT, and another user's."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            USER_ID: ["heavy"] * n + ["heavy"] * 3 + ["other"] * 5,
            EVENT_TS: np.concatenate(
                [
                    AT - rng.integers(1, 730 * DAY, n),
                    AT + np.arange(3),  # at or after AT: not yet watched
                    AT - np.arange(1, 6) * DAY,
                ]
            ),
            ITEM_ID: [f"i{k}" for k in rng.integers(0, n, n)]
            + ["late0", "late1", "late2"]
            + [f"o{k}" for k in range(5)],
        }
    )


@pytest.mark.parametrize("max_items", [100_000, 500])
def test_a_user_with_thousands_of_engagements_has_all_of_them_in_the_horizon(max_items):
    rows = engagements(6000)
    watched = Watched(horizon_seconds=365 * DAY, max_items=max_items, from_impressions=False)
    keys = np.array(["nobody", "heavy", "other"], dtype=object)
    lists = watched_items(pa.Table.from_pandas(rows), keys, AT, watched).to_pylist()

    inside = rows[(rows[EVENT_TS] < AT) & (rows[EVENT_TS] >= AT - 365 * DAY)]
    newest = inside.sort_values(EVENT_TS, ascending=False, kind="stable")
    expected = newest[newest[USER_ID] == "heavy"].drop_duplicates(ITEM_ID)[ITEM_ID].to_list()
    assert len(expected) > 2000  # thousands, far past any history length
    assert lists[0] == []
    assert lists[1] == expected[:max_items]  # newest first, each once
    assert lists[2] == [f"o{k}" for k in range(5)]


def clicks(items, at, clicked=1):
    return pd.DataFrame(
        {
            USER_ID: "u",
            ITEM_ID: items,
            EVENT_TS: at + np.arange(len(items)),
            CLICKED: clicked,
            WATCH_SECONDS: 10.0,
        }
    )


def test_events_received_online_add_to_the_watched_items():
    listed = np.empty(1, dtype=object)
    listed[0] = ["b", "a"]
    row = {WATCHED_ITEMS: listed}
    events = pd.concat([clicks(["c", "a"], AT), clicks(["skipped"], AT + 5, clicked=0)])
    updated = apply_events(row, events, history_length=10, at=AT + 100)
    assert updated[WATCHED_ITEMS][0] == ["a", "c", "b"]  # newest first, each once
    assert row[WATCHED_ITEMS][0] == ["b", "a"]  # the snapshot's row is not changed
    seen = apply_events(row, events, 10, AT + 100, watched_from_impressions=True)
    assert seen[WATCHED_ITEMS][0] == ["skipped", "a", "c", "b"]
    capped = apply_events(row, events, 10, AT + 100, watched_max=2)
    assert capped[WATCHED_ITEMS][0] == ["a", "c"]
    future = apply_events(row, clicks(["d"], AT + 500), 10, AT + 100)
    assert future[WATCHED_ITEMS][0] == ["b", "a"]  # after the request: not yet watched


def test_the_funnel_keeps_thousands_of_watched_items_off_the_page(stages, pushed_root):
    funnel = Funnel.from_serving_root(pushed_root)
    user = funnel.features.user_index[0]
    row, _ = funnel.features.user(user)
    catalog = list(funnel.catalog)
    assert len(catalog) >= 100
    keep = set(catalog[:40])
    # Everything else watched, and thousands of items beyond the catalog besides.
    watched = np.empty(1, dtype=object)
    watched[0] = [item for item in catalog if item not in keep] + [f"x{k}" for k in range(5000)]
    row = {**row, WATCHED_ITEMS: watched}
    result = funnel.recommend(user, Context(request_time(stages)), k=10, user_row=row)
    # A full page of what is left: the watched items were left out of every source's
    # list before the candidates were cut, not dropped from a page of them.
    assert len(result.items) == 10 and set(result.items[ITEM_ID]) <= keep
    # Counted: the retrieval model's own candidates watched or in the history.
    top_k = set(_retrieved(funnel, user, stages))
    engaged = (set(catalog) - keep) | set(row["user_history_items"][0])
    assert result.removed["watched"] == len(top_k & engaged) > len(top_k) // 2
    assert not set(result.items[ITEM_ID]) & engaged
    assert (
        not set(funnel.candidates({**row, **Context(request_time(stages)).columns()}).item_ids)
        - keep
    )
