"""The candidate sources besides the two-tower, counted from the raw training examples
(``recsys.serving.candidates`` serves and merges them):

- popular: each item's training clicks, most first;
- co-engagement: for every click, the pairs (each of the user's ``history`` most
  recent history items, the clicked item), counted in both directions; an item's
  neighbours are weighted by cosine (count / sqrt(clicks of each)), so the most
  clicked items do not become everyone's neighbour, and the strongest
  ``neighbors`` are kept per item.

The examples are streamed ``batch_rows`` at a time. The distinct pairs held while
counting are bounded by MAX_PAIRS (configuration, not the log): past it each item
keeps only its ``PRUNE_FACTOR x neighbors`` strongest counts, the usual
heavy-hitters approximation. Written by hand: no library in the lock counts item
co-occurrence over a stream (implicit's item-item models need the whole
user x item matrix in memory).
"""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.core import storage
from recsys.core.contracts import (
    CLICKED,
    CO_ENGAGEMENT_FILE,
    ITEM_ID,
    NEIGHBOR_ID,
    POPULAR_FILE,
    SOURCES_FILE,
    WEIGHT,
)
from recsys.core.features import HISTORY_COLUMNS
from recsys.core.limits import BATCH_ROWS
from recsys.core.tables import iter_dataset, read_dataset

HISTORY_ITEMS = HISTORY_COLUMNS[0]
# Distinct (item, neighbour) pairs held while counting (16 bytes each, plus a sort's copy).
MAX_PAIRS = 20_000_000
PRUNE_FACTOR = 4
# Popular items kept, in lists of the funnel's length: enough that a heavy user's
# watched items cannot empty the list.
POPULAR_LISTS_KEPT = 10


class PairCounts:
    """Counts of (item, neighbour) row pairs as sorted int64 keys, merged batch by batch."""

    def __init__(self, n_items: int, keep_per_item: int, max_pairs: int = MAX_PAIRS):
        self.n_items, self.keep_per_item, self.max_pairs = n_items, keep_per_item, max_pairs
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.float64)
        self.pruned = False

    def add(self, source: np.ndarray, neighbor: np.ndarray) -> None:
        keys = np.concatenate([self.keys, source.astype(np.int64) * self.n_items + neighbor])
        weights = np.concatenate([self.counts, np.ones(len(source))])
        self.keys, inverse = np.unique(keys, return_inverse=True)
        self.counts = np.bincount(inverse, weights=weights, minlength=len(self.keys))
        if len(self.keys) > self.max_pairs:
            self.keys, self.counts = self.strongest(self.counts, PRUNE_FACTOR * self.keep_per_item)
            self.pruned = True

    def strongest(self, weights: np.ndarray, per_item: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``per_item`` highest-weighted pairs of each item (keys sorted again)."""
        source = self.keys // self.n_items
        order = np.lexsort((-weights, source))
        first = np.searchsorted(source[order], source[order], side="left")
        kept = np.sort(order[np.arange(len(order)) - first < per_item])
        return self.keys[kept], weights[kept]


def _recent_pairs(batch: pa.RecordBatch, items: pd.Index, history: int):
    """(history item rows, clicked item rows) of a batch's clicks: each click paired with
    the ``history`` newest items of its history (the join writes them newest first)."""
    clicked = batch.filter(pc.equal(batch.column(CLICKED), 1))
    target = items.get_indexer(clicked.column(ITEM_ID).to_numpy(zero_copy_only=False))
    lists = clicked.column(HISTORY_ITEMS)
    flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(lists).to_numpy()
    starts = np.searchsorted(parents, parents, side="left")
    recent = np.arange(len(flat)) - starts < history
    source = items.get_indexer(flat[recent])
    neighbor = target[parents[recent]]
    keep = (source >= 0) & (neighbor >= 0) & (source != neighbor)
    return target[target >= 0], source[keep], neighbor[keep]


def build_candidate_sources(
    train_examples_dir: str,
    item_snapshot_dir: str,
    out_dir: str,
    sources: list[str],
    per_source: int,
    history: int,
    neighbors: int,
    weight: float,
    batch_rows: int = BATCH_ROWS,
) -> dict:
    """Count the sources over the training examples and write them to ``out_dir``
    (``contracts.SNAPSHOT_CANDIDATE_SOURCES``'s layout); returns what was counted."""
    items = pd.Index(read_dataset(item_snapshot_dir, columns=[ITEM_ID])[ITEM_ID].astype(str))
    n_items = len(items)
    clicks = np.zeros(n_items)
    pairs = PairCounts(n_items, neighbors)
    for batch in iter_dataset(train_examples_dir, batch_rows, [ITEM_ID, CLICKED, HISTORY_ITEMS]):
        targets, source, neighbor = _recent_pairs(batch, items, history)
        clicks += np.bincount(targets, minlength=n_items)
        pairs.add(np.concatenate([source, neighbor]), np.concatenate([neighbor, source]))
    source, neighbor = pairs.keys // n_items, pairs.keys % n_items
    cosine = pairs.counts / np.sqrt(np.maximum(clicks[source], 1) * np.maximum(clicks[neighbor], 1))
    pairs.keys, cosine = pairs.strongest(cosine, neighbors)
    source, neighbor = pairs.keys // n_items, pairs.keys % n_items
    popular = np.argsort(-clicks, kind="stable")[: POPULAR_LISTS_KEPT * per_source]
    popular = popular[clicks[popular] > 0]
    storage.makedirs(out_dir)
    _write(
        pd.DataFrame({ITEM_ID: items[popular], WEIGHT: clicks[popular]}),
        storage.join(out_dir, POPULAR_FILE),
    )
    _write(
        pd.DataFrame({ITEM_ID: items[source], NEIGHBOR_ID: items[neighbor], WEIGHT: cosine}),
        storage.join(out_dir, CO_ENGAGEMENT_FILE),
    )
    meta = {
        "sources": list(sources),
        "per_source": per_source,
        "history": history,
        "weight": weight,
    }
    storage.write_text(storage.join(out_dir, SOURCES_FILE), json.dumps(meta, indent=2))
    return {
        "candidate_sources": ",".join(sources),
        "popular_items": int(len(popular)),
        "co_engagement_pairs": int(len(source)),
        "co_engagement_items": int(len(np.unique(source))),
        "co_engagement_pruned": bool(pairs.pruned),
    }


def _write(frame: pd.DataFrame, path: str) -> None:
    with storage.open(path, "wb") as handle:
        frame.to_parquet(handle, index=False)
