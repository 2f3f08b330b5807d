"""A user's features brought up to date with the engagements received since the
snapshot: what the online service serves between two daily pushes.

The snapshot row of a user holds the feature views and the engagement history as
of the push's ``as_of``. Events the service receives afterwards (impressions with
their outcome) are folded in at request time ``at`` with the join's own
definitions, so serving computes what training would for an event at ``at``:

- the engagement history (``recsys.core.features.HISTORY_COLUMNS``) is strictly
  before the event: the clicked items before ``at`` go first, newest first, at
  most ``history_length`` are kept, the count adds them, the value (watch time)
  is averaged over the listed items;
- the trailing-window aggregates of the user's view (``recsys.core.aggregates``)
  are a daily view: an event sees the row of its day's midnight, which holds the
  days before. So events count from the first midnight after them: a request on a
  later day than the snapshot adds the events of the days in between, as that
  day's view row would; the same day's events wait, exactly as in training;
- the watched items (``contracts.WATCHED_ITEMS``, what the watched rule keeps out
  of pages) gain every clicked item before ``at`` (every impression when the
  snapshot was built ``watched_from: impressions``), newest first, each once, at
  most ``watched_max`` kept.

Two things the row cannot tell, and what is done instead, until the next daily
push recomputes the row: the snapshot keeps the mean of its listed items' values,
not each value, so when new clicks push old items out of the list, the kept old
items count at their old mean; and a trailing window's oldest days do not expire
between pushes.
"""

import numpy as np
import pandas as pd

from recsys.core.aggregates import AGGREGATES
from recsys.core.contracts import (
    CLICKED,
    EVENT_TS,
    ITEM_ID,
    USER_FEATURES,
    USER_ID,
    WATCH_SECONDS,
    WATCHED_ITEMS,
    WATCHED_MAX_ITEMS,
)
from recsys.core.derived import DAY
from recsys.core.features import HISTORY_COLUMNS

# The columns an engagement event carries.
EVENT_COLUMNS = (USER_ID, ITEM_ID, EVENT_TS, CLICKED, WATCH_SECONDS)


def apply_events(
    row: dict,
    events: pd.DataFrame,
    history_length: int,
    at: int,
    watched_max: int = WATCHED_MAX_ITEMS,
    watched_from_impressions: bool = False,
) -> dict:
    """``row`` (feature name -> array of length 1, as the snapshot gives it) with
    ``events`` (one user's since the snapshot, the EVENT_COLUMNS, any order) folded
    in for a request at ``at`` (Unix seconds). Columns the row does not have are
    left alone; the row is not modified."""
    events = events[events[EVENT_TS].to_numpy() < at]
    if events.empty:
        return row
    updated = dict(row)
    if WATCHED_ITEMS in row:
        consumed = events if watched_from_impressions else events[events[CLICKED] == 1]
        newest = consumed.iloc[::-1].sort_values(EVENT_TS, ascending=False, kind="stable")
        items = list(newest[ITEM_ID].astype(str)) + [str(item) for item in row[WATCHED_ITEMS][0]]
        listed = np.empty(1, dtype=object)
        listed[0] = list(dict.fromkeys(items))[:watched_max]  # each once, newest first
        updated[WATCHED_ITEMS] = listed
    viewed = events[events[EVENT_TS].to_numpy() < at - at % DAY]  # before at's midnight
    for name, aggregate in AGGREGATES.items():
        # A smoothed ratio (ctr) cannot be updated without the counts behind it: it
        # stays as of the snapshot. The user views hold counts and sums only.
        if aggregate.view != USER_FEATURES or name not in row or aggregate.kind == "ctr":
            continue
        added = len(viewed) if aggregate.kind == "count" else viewed[aggregate.column].sum()
        updated[name] = row[name] + np.asarray(added).astype(row[name].dtype)

    items_column, count_column, mean_column = HISTORY_COLUMNS
    # Newest first; of two at the same second, the one received later (as the join
    # orders rows it read later).
    clicked = events[events[CLICKED].to_numpy() == 1].iloc[::-1]
    clicked = clicked.sort_values(EVENT_TS, ascending=False, kind="stable")
    if clicked.empty or items_column not in row:
        return updated
    new_items = clicked[ITEM_ID].astype(str).to_numpy()[:history_length]
    new_values = clicked[WATCH_SECONDS].to_numpy(np.float64)[: len(new_items)]
    old_items = [str(item) for item in row[items_column][0]]
    kept = old_items[: max(history_length - len(new_items), 0)]
    listed = np.empty(1, dtype=object)
    listed[0] = list(new_items) + kept
    updated[items_column] = listed
    if count_column in row:
        updated[count_column] = row[count_column] + len(clicked)
    if mean_column in row:
        old_mean = float(row[mean_column][0])
        mean = (new_values.sum() + old_mean * len(kept)) / (len(new_items) + len(kept))
        updated[mean_column] = np.asarray([mean]).astype(row[mean_column].dtype)
    return updated
