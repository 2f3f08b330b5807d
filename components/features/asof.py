"""Vectorized point-in-time (as-of) lookup with Feast's semantics.

For each event and one feature view: the feature row with the same entity key
and the largest ``feature_ts <= event_ts``; with a ``ttl``, also
``feature_ts >= event_ts - ttl``; ties on ``feature_ts`` go to the latest
``created_ts`` (then to the row given last); with ``created_before_event``, a
row counts only once ``created_ts <= event_ts`` (a late backfill must not leak).

Written by hand because nothing in the stack does this on arrays: pandas'
``merge_asof`` has no ttl-with-ties-and-created_ts rule and needs sorted frames,
and Beam has no as-of join. Everything is numpy sorts and binary searches over
whole columns (O((n + m) log(n + m))), so the same function serves one process
or one bucket of a Beam job.
"""

import numpy as np
import pandas as pd

NO_MATCH = -1
_TIME_BITS = 34  # relative timestamps below 2**34 s (~540 years) fit beside the key code


def asof_indices(event_keys: np.ndarray, event_ts: np.ndarray, feature_keys: np.ndarray,
                 feature_ts: np.ndarray, created_ts: np.ndarray | None = None,
                 ttl_seconds: int | None = None,
                 created_before_event: bool = False) -> np.ndarray:
    """Index of the chosen feature row for each event, or NO_MATCH (-1).

    Keys may be any hashable dtype numpy can sort (strings, ints); timestamps are
    int64 seconds.
    """
    event_ts = np.asarray(event_ts, dtype=np.int64)
    feature_ts = np.asarray(feature_ts, dtype=np.int64)
    result = np.full(len(event_ts), NO_MATCH, dtype=np.int64)
    if len(event_ts) == 0 or len(feature_ts) == 0:
        return result
    created = (np.asarray(created_ts, dtype=np.int64) if created_ts is not None
               else np.zeros(len(feature_ts), dtype=np.int64))
    # Any consistent integer per key will do (not sorted): hash-based factorize.
    inverse, codes = pd.factorize(np.concatenate([np.asarray(feature_keys),
                                                  np.asarray(event_keys)]))
    feature_code, event_code = inverse[:len(feature_ts)], inverse[len(feature_ts):]
    # When a row becomes usable: at feature_ts, or later if it was written later.
    available = np.maximum(feature_ts, created) if created_before_event else feature_ts

    # Preference among usable rows of one key: larger feature_ts, then created_ts,
    # then input position. rank orders all rows by (key, preference).
    preference = np.lexsort((np.arange(len(feature_ts)), created, feature_ts, feature_code))
    rank = np.empty(len(feature_ts), dtype=np.int64)
    rank[preference] = np.arange(len(feature_ts))

    # Rows in order of (key, available). Ranks of a key all exceed those of smaller
    # keys, so a running max over the whole array is the best usable row so far
    # within each key, never one of another key.
    order = np.lexsort((rank, available, feature_code))
    best_rank = np.maximum.accumulate(rank[order])

    origin = min(int(available.min()), int(event_ts.min()))
    if max(int(available.max()), int(event_ts.max())) - origin >= 2 ** _TIME_BITS:
        raise ValueError("timestamps span more than 2**34 seconds; are they in seconds?")
    if len(codes) >= 2 ** (63 - _TIME_BITS):
        raise ValueError("too many distinct keys for one as-of lookup; bucket them first")
    sorted_feature = (feature_code[order].astype(np.int64) << _TIME_BITS) \
        + (available[order] - origin)
    probe = (event_code.astype(np.int64) << _TIME_BITS) + (event_ts - origin)
    position = np.searchsorted(sorted_feature, probe, side="right") - 1
    found = position >= 0
    found[found] = feature_code[order[position[found]]] == event_code[found]
    chosen = preference[best_rank[position[found]]]
    if ttl_seconds is not None:
        fresh = feature_ts[chosen] >= event_ts[found] - ttl_seconds
        chosen = np.where(fresh, chosen, NO_MATCH)
    result[found] = chosen
    return result
