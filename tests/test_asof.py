"""The vectorized as-of lookup against a brute-force oracle (Feast's semantics)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.components.features.asof import NO_MATCH, AsOfIndex, HistoryIndex


def asof_indices(
    event_keys,
    event_ts,
    feature_keys,
    feature_ts,
    created=None,
    ttl=None,
    created_before_event=False,
):
    return AsOfIndex(feature_keys, feature_ts, created, ttl, created_before_event).lookup(
        event_keys, event_ts
    )


def history_indices(event_keys, event_ts, history_keys, history_ts, length):
    return HistoryIndex(history_keys, history_ts).lookup(event_keys, event_ts, length)


def oracle(event_keys, event_ts, feature_keys, feature_ts, created, ttl, created_before_event):
    chosen = []
    for key, ts in zip(event_keys, event_ts, strict=True):
        candidates = [
            i
            for i in range(len(feature_ts))
            if feature_keys[i] == key
            and feature_ts[i] <= ts
            and (ttl is None or feature_ts[i] >= ts - ttl)
            and (not created_before_event or created[i] <= ts)
        ]
        chosen.append(
            max(candidates, key=lambda i: (feature_ts[i], created[i], i))
            if candidates
            else NO_MATCH
        )
    return np.array(chosen, dtype=np.int64)


small_times = st.integers(0, 30)  # few distinct values: many ties
rows = st.lists(st.tuples(st.sampled_from("abcd"), small_times, st.integers(0, 40)), max_size=40)
events = st.lists(st.tuples(st.sampled_from("abcde"), small_times), max_size=40)


@settings(max_examples=300, deadline=None)
@given(rows, events, st.one_of(st.none(), st.integers(0, 10)), st.booleans())
def test_matches_brute_force_oracle(feature_rows, event_rows, ttl, created_before_event):
    feature_keys = np.array([r[0] for r in feature_rows], dtype=object)
    feature_ts = np.array([r[1] for r in feature_rows], dtype=np.int64)
    created = np.array([r[1] + r[2] for r in feature_rows], dtype=np.int64)  # >= feature_ts
    event_keys = np.array([e[0] for e in event_rows], dtype=object)
    event_ts = np.array([e[1] for e in event_rows], dtype=np.int64)
    got = asof_indices(
        event_keys.astype(str),
        event_ts,
        feature_keys.astype(str),
        feature_ts,
        created,
        ttl,
        created_before_event,
    )
    expected = oracle(
        event_keys, event_ts, feature_keys, feature_ts, created, ttl, created_before_event
    )
    np.testing.assert_array_equal(got, expected)
    assert len(got) == len(event_rows)  # one answer per event, never dropped


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 5), st.integers(1_700_000_000, 1_700_100_000)),
        min_size=1,
        max_size=60,
    )
)
def test_sentinels_just_after_events_never_match(event_rows):
    keys = np.array([k for k, _ in event_rows])
    ts = np.array([t for _, t in event_rows], dtype=np.int64)
    # Per event: a real row an hour before and a sentinel one second after.
    feature_keys = np.concatenate([keys, keys])
    feature_ts = np.concatenate([ts - 3600, ts + 1])
    chosen = asof_indices(keys, ts, feature_keys, feature_ts)
    assert (chosen >= 0).all()
    assert (feature_ts[chosen] <= ts).all()
    own_sentinel = len(keys) + np.arange(len(keys))
    assert (chosen != own_sentinel).all()  # a later event may use it; its own event never


def test_empty_inputs_and_unknown_keys():
    none = np.array([], dtype=np.int64)
    assert asof_indices(np.array(["a"]), np.array([5]), none.astype(str), none).tolist() == [-1]
    assert asof_indices(
        np.array(["z"]), np.array([5]), np.array(["a"]), np.array([1])
    ).tolist() == [-1]


def history_oracle(event_keys, event_ts, history_keys, history_ts, length):
    indices, counts = [], []
    for key, ts in zip(event_keys, event_ts, strict=True):
        earlier = [
            i for i in range(len(history_ts)) if history_keys[i] == key and history_ts[i] < ts
        ]
        # newest first; among equal timestamps the order is unspecified, compare as sets
        earlier.sort(key=lambda i: history_ts[i], reverse=True)
        indices.append(earlier[:length])
        counts.append(len(earlier))
    return indices, counts


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcd"), small_times), max_size=40),
    events,
    st.integers(1, 5),
)
def test_history_matches_brute_force_oracle(history_rows, event_rows, length):
    history_keys = np.array([r[0] for r in history_rows], dtype=object).astype(str)
    history_ts = np.array([r[1] for r in history_rows], dtype=np.int64)
    event_keys = np.array([e[0] for e in event_rows], dtype=object).astype(str)
    event_ts = np.array([e[1] for e in event_rows], dtype=np.int64)
    indices, counts = history_indices(event_keys, event_ts, history_keys, history_ts, length)
    expected, expected_counts = history_oracle(
        event_keys, event_ts, history_keys, history_ts, length
    )
    assert indices.shape == (len(event_rows), length)
    np.testing.assert_array_equal(counts, expected_counts)
    for got, want, key in zip(indices, expected, event_keys, strict=True):
        taken = got[got != NO_MATCH]
        assert (got[len(taken) :] == NO_MATCH).all()  # padding only at the end
        # Same timestamps in the same order (newest first); rows tied on time may swap.
        assert history_ts[taken].tolist() == history_ts[want].tolist()
        assert (history_keys[taken] == key).all()


def test_history_never_contains_the_event_or_later_rows():
    # The event's own engagement is in the history table at the event's second.
    keys = np.array(["u1", "u1", "u1", "u2"])
    ts = np.array([10, 20, 30, 20])
    indices, counts = history_indices(keys, ts, keys, ts, 3)
    assert counts.tolist() == [0, 1, 2, 0]
    assert indices.tolist() == [[-1, -1, -1], [0, -1, -1], [1, 0, -1], [-1, -1, -1]]
