"""Vectorized point-in-time (as-of) lookup with Feast's semantics.

For each event and one feature view: the feature row with the same entity key
and the largest ``feature_ts <= event_ts``; with a ``ttl``, also
``feature_ts >= event_ts - ttl``; ties on ``feature_ts`` go to the latest
``created_ts`` (then to the row given last); with ``created_before_event``, a
row counts only once ``created_ts <= event_ts`` (a late backfill must not leak).

Written by hand because nothing in the stack does this on arrays: pandas'
``merge_asof`` has no ttl-with-ties-and-created_ts rule and needs sorted frames,
and Beam has no as-of join. Everything is numpy sorts and binary searches over
whole columns (O((n + m) log(n + m))); keys become codes through Arrow's hash
dictionary, never Python strings. The feature side is sorted once (``AsOfIndex``,
``HistoryIndex``) and probed by any number of event batches: one bucket of a Beam
job, or every batch when the features are broadcast.

Also the engagement history: each event's newest rows of its key strictly
before it (``HistoryIndex``).
"""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NO_MATCH = -1
_TIME_BITS = 34  # relative timestamps below 2**34 s (~540 years) fit beside the key code


class AsOfIndex:
    """The feature rows of one view, sorted once for any number of event lookups
    (one Beam bucket, or every event batch when the features are broadcast)."""

    def __init__(
        self,
        feature_keys,
        feature_ts,
        created_ts=None,
        ttl_seconds: int | None = None,
        created_before_event: bool = False,
    ):
        self.feature_ts = np.asarray(feature_ts, dtype=np.int64)
        self.ttl_seconds = ttl_seconds
        n = len(self.feature_ts)
        if created_before_event and created_ts is None:
            raise ValueError("created_before_event needs the rows' created_ts")
        created = (
            np.asarray(created_ts, dtype=np.int64)
            if created_ts is not None
            else np.zeros(n, dtype=np.int64)
        )
        # When a row becomes usable: at feature_ts, or later if it was written later.
        available = (
            np.maximum(self.feature_ts, created) if created_before_event else self.feature_ts
        )
        self.keys, self.feature_code = _encode(feature_keys)
        if len(self.keys) >= 2 ** (63 - _TIME_BITS):
            raise ValueError("too many distinct keys for one as-of lookup; bucket them first")
        self.origin = int(available.min()) if n else 0
        if n and int(available.max()) - self.origin >= 2**_TIME_BITS:
            raise ValueError(
                "feature timestamps span more than 2**34 seconds; are they in seconds?"
            )

        # Preference among usable rows of one key: larger feature_ts, then created_ts,
        # then input position. rank orders all rows by (key, preference).
        self.preference = np.lexsort((np.arange(n), created, self.feature_ts, self.feature_code))
        rank = np.empty(n, dtype=np.int64)
        rank[self.preference] = np.arange(n)
        # Rows in order of (key, available). Ranks of a key all exceed those of smaller
        # keys, so a running max over the whole array is the best usable row so far
        # within each key, never one of another key.
        self.order = np.lexsort((rank, available, self.feature_code))
        self.best_rank = np.maximum.accumulate(rank[self.order])
        self.sorted_available = (self.feature_code[self.order] << _TIME_BITS) + (
            available[self.order] - self.origin
        )

    def lookup(self, event_keys, event_ts) -> np.ndarray:
        event_ts = np.asarray(event_ts, dtype=np.int64)
        result = np.full(len(event_ts), NO_MATCH, dtype=np.int64)
        if len(event_ts) == 0 or len(self.feature_ts) == 0:
            return result
        event_code, known = _codes_in(event_keys, self.keys)
        # Before every row: -1 lands in the previous key's range, which the key check
        # below rejects; after every row: the largest offset still finds the last one.
        offset = np.clip(event_ts - self.origin, -1, 2**_TIME_BITS - 1)
        probe = (event_code << _TIME_BITS) + offset
        position = np.searchsorted(self.sorted_available, probe, side="right") - 1
        found = known & (position >= 0)
        found[found] = self.feature_code[self.order[position[found]]] == event_code[found]
        chosen = self.preference[self.best_rank[position[found]]]
        if self.ttl_seconds is not None:
            fresh = self.feature_ts[chosen] >= event_ts[found] - self.ttl_seconds
            chosen = np.where(fresh, chosen, NO_MATCH)
        result[found] = chosen
        return result


def arrow_array(keys) -> pa.Array:
    """Keys from numpy, a chunked or a plain Arrow array, as one Arrow array."""
    if isinstance(keys, pa.ChunkedArray):
        return keys.combine_chunks()
    return keys if isinstance(keys, pa.Array) else pa.array(np.asarray(keys))


def _encode(keys) -> tuple[pa.Array, np.ndarray]:
    """(distinct keys, int64 code per row): Arrow's hash table, no Python objects."""
    encoded = pc.dictionary_encode(arrow_array(keys))
    return encoded.dictionary, encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _codes_in(keys, dictionary: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(code per row, 0 where unknown; whether the key is in ``dictionary``)."""
    codes = pc.index_in(arrow_array(keys), value_set=dictionary)
    known = np.asarray(codes.is_valid(), dtype=bool)
    return codes.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64), known


class HistoryIndex:
    """History rows (key, ts) sorted once; ``lookup`` gives each event its newest
    ``length`` rows of the same key with ``ts < event_ts`` (strictly: the event
    itself, and anything at the same second, never counts)."""

    def __init__(self, history_keys, history_ts):
        history_ts = np.asarray(history_ts, dtype=np.int64)
        self.keys, code = _encode(history_keys)
        self.origin = int(history_ts.min()) if len(history_ts) else 0
        if len(history_ts) and int(history_ts.max()) - self.origin >= 2**_TIME_BITS:
            raise ValueError(
                "history timestamps span more than 2**34 seconds; are they in seconds?"
            )
        self.order = np.lexsort((history_ts, code))
        self.sorted_history = (code[self.order] << _TIME_BITS) + (
            history_ts[self.order] - self.origin
        )

    def lookup(self, event_keys, event_ts, length: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, counts)``: an (events, length) matrix of history row indices,
        newest first, NO_MATCH where the key has fewer earlier rows; and the number
        of earlier rows of the key in all."""
        event_ts = np.asarray(event_ts, dtype=np.int64)
        indices = np.full((len(event_ts), length), NO_MATCH, dtype=np.int64)
        if len(event_ts) == 0 or len(self.order) == 0:
            return indices, np.zeros(len(event_ts), dtype=np.int64)
        event_code, known = _codes_in(event_keys, self.keys)
        offset = np.clip(event_ts - self.origin, 0, 2**_TIME_BITS - 1)
        # side="left": rows at the event's own second are not before it.
        end = np.searchsorted(self.sorted_history, (event_code << _TIME_BITS) + offset)
        start = np.searchsorted(self.sorted_history, event_code << _TIME_BITS)
        counts = np.where(known, end - start, 0)
        positions = end[:, None] - 1 - np.arange(length)[None, :]
        earlier = (positions >= start[:, None]) & known[:, None]
        indices[earlier] = self.order[positions[earlier]]
        return indices, counts
