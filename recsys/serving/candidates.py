"""Candidates from several sources, merged into one list per request.

The two-tower model alone fails users it knows little about: on a log where most
eval users are new, popularity beat it. So each request's candidates come from
every source train_retrieval wrote (``contracts.CANDIDATE_SOURCES``):

- ``two_tower``: the retrieval model's top-K (``recsys.serving.retrieval``);
- ``co_engagement``: items other users clicked close to (before or after) the
  items of this user's newest history, cosine-normalised counts summed over the
  history; nothing for a user without one;
- ``popular``: the most clicked training items, the same for everyone.

Each list leaves out what the user already engaged with before it is cut, so a
heavy user's lists are not mostly what the watched rule would drop. The lists are
merged by reciprocal rank fusion (Cormack et al. 2009: each candidate scores the sum
of 1 / (RRF_K + rank) over the lists that hold it), the other sources' terms times
one weight (``retrieval_sources_weight``); RRF needs no score calibration between
sources, and its constant is the paper's. The funnel keeps the best
``retrieval_top_k`` and the ranker orders them; each candidate keeps the source that
ranked it highest, which evaluation reports.

Everything is whole-array work over many queries at once: serving calls it with
one query, evaluation with thousands.
"""

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.core import storage
from recsys.core.contracts import (
    CANDIDATE_SOURCES,
    CO_ENGAGEMENT,
    CO_ENGAGEMENT_FILE,
    ITEM_ID,
    NEIGHBOR_ID,
    POPULAR,
    POPULAR_FILE,
    SOURCES_FILE,
    TWO_TOWER,
    WEIGHT,
)

# Reciprocal rank fusion's constant (the paper's value, not fitted here).
RRF_K = 60


def rank_within_query(query_of: np.ndarray) -> np.ndarray:
    """Each entry's position within its query's run (``query_of`` grouped, sorted)."""
    return np.arange(len(query_of)) - np.searchsorted(query_of, query_of)


@dataclass
class RankedLists:
    """Ranked lists of many queries as flat arrays: the query of each entry, the
    item's snapshot row and its rank in that query's list (0 = first)."""

    query_of: np.ndarray
    rows: np.ndarray
    rank: np.ndarray

    def without(self, engaged: np.ndarray, n_items: int) -> "RankedLists":
        """These lists without the (query, row) keys in ``engaged`` (``engaged_keys``),
        the rest ranked again from 0: the other sources rank after leaving engaged
        items out, so a list keeping its old ranks would lose the fusion (and the
        credit for its items) by as many places as the watched rule removed above."""
        keep = ~np.isin(self.query_of.astype(np.int64) * n_items + self.rows, engaged)
        query_of = self.query_of[keep]
        return RankedLists(query_of, self.rows[keep], rank_within_query(query_of))

    def head(self, n: int) -> "RankedLists":
        """Each query's first ``n`` entries, ranked again from 0 (grouped by query)."""
        rank = rank_within_query(self.query_of)
        keep = rank < n
        return RankedLists(self.query_of[keep], self.rows[keep], rank[keep])

    @classmethod
    def of_matrix(cls, rows: np.ndarray) -> "RankedLists":
        """From a queries x K matrix of rows, best first; rows < 0 are skipped."""
        n_queries, width = rows.shape
        query_of = np.repeat(np.arange(n_queries), width)
        rank = np.tile(np.arange(width), n_queries)
        flat = rows.ravel()
        keep = flat >= 0
        return cls(query_of[keep], flat[keep], rank[keep])


@dataclass
class Merged:
    """Every query's merged candidates, grouped by query (in query order) and best
    fused score first within it."""

    query_of: np.ndarray
    rows: np.ndarray
    fused_score: np.ndarray
    source: np.ndarray  # index into CANDIDATE_SOURCES: the list that ranked it highest

    def head(self, n: int) -> "Merged":
        """Each query's ``n`` best."""
        keep = rank_within_query(self.query_of) < n
        return Merged(
            self.query_of[keep], self.rows[keep], self.fused_score[keep], self.source[keep]
        )


def engaged_keys(engaged, item_index: pd.Index) -> np.ndarray:
    """The sorted (query, row) keys of each query's engaged items (``engaged``: one
    list of item ids per query); ids the snapshot lacks are skipped."""
    lengths = np.fromiter((len(items) for items in engaged), dtype=np.int64, count=len(engaged))
    flat = np.concatenate([np.asarray(items, dtype=object) for items in engaged] or [[]])
    rows = item_index.get_indexer(flat.astype(str)) if len(flat) else np.zeros(0, np.int64)
    query_of = np.repeat(np.arange(len(engaged)), lengths)
    return np.unique(query_of[rows >= 0].astype(np.int64) * len(item_index) + rows[rows >= 0])


def fuse(
    lists: dict[str, RankedLists],
    n_queries: int,
    n_items: int,
    weights: dict[str, float] | None = None,
) -> Merged:
    """Reciprocal rank fusion of each source's lists (source name -> RankedLists),
    each list's terms times its source's weight (default 1)."""
    keys, scores, ranks, sources = [], [], [], []
    for name, ranked in lists.items():
        keys.append(ranked.query_of.astype(np.int64) * n_items + ranked.rows)
        scores.append((weights or {}).get(name, 1.0) / (RRF_K + 1.0 + ranked.rank))
        ranks.append(ranked.rank)
        sources.append(np.full(len(ranked.rows), CANDIDATE_SOURCES.index(name), dtype=np.int8))
    keys, scores = np.concatenate(keys), np.concatenate(scores)
    ranks, sources = np.concatenate(ranks), np.concatenate(sources)
    unique, inverse = np.unique(keys, return_inverse=True)
    fused = np.bincount(inverse, weights=scores, minlength=len(unique))
    # The best-ranked holder of each candidate (ties: the earlier source).
    best = np.lexsort((sources, ranks, inverse))
    starts = np.ones(len(best), dtype=bool)
    starts[1:] = inverse[best][1:] != inverse[best][:-1]
    first = best[starts]
    query_of, rows = unique // n_items, unique % n_items
    order = np.lexsort((rows, -fused, query_of))
    source = np.empty(len(unique), dtype=np.int8)
    source[inverse[first]] = sources[first]
    return Merged(query_of[order], rows[order], fused[order], source[order])


class CandidateSources:
    """The sources train_retrieval wrote besides the two-tower, over a snapshot's
    item rows: the popular list and the co-engagement neighbours (a CSR matrix)."""

    def __init__(
        self,
        item_index: pd.Index,
        popular: pd.DataFrame,
        co_engagement: pd.DataFrame,
        meta: dict,
    ):
        # The sources merged (the two-tower's list comes from the retrieval model).
        self.served = [name for name in CANDIDATE_SOURCES if name in meta["sources"]]
        self.per_source = int(meta["per_source"])
        self.history = int(meta["history"])
        # The two-tower's list counts fully; the others' by the configured weight.
        self.fusion_weights = {
            name: 1.0 if name == TWO_TOWER else float(meta["weight"]) for name in self.served
        }
        self.item_index = item_index
        rows = item_index.get_indexer(popular[ITEM_ID].astype(str))
        # All kept (train_retrieval keeps 10 lists' worth): a heavy user's list is the
        # first per_source they have not engaged with.
        self.popular_rows = rows[rows >= 0]
        source = item_index.get_indexer(co_engagement[ITEM_ID].astype(str))
        neighbor = item_index.get_indexer(co_engagement[NEIGHBOR_ID].astype(str))
        keep = (source >= 0) & (neighbor >= 0)
        order = np.argsort(source[keep], kind="stable")
        self.neighbors = neighbor[keep][order]
        self.weights = co_engagement[WEIGHT].to_numpy(dtype=np.float64)[keep][order]
        self.indptr = np.searchsorted(source[keep][order], np.arange(len(item_index) + 1))

    @classmethod
    def load(cls, directory: str, item_index: pd.Index) -> "CandidateSources":
        meta = json.loads(storage.read_text(storage.join(directory, SOURCES_FILE)))
        return cls(
            item_index,
            storage.read_parquet(storage.join(directory, POPULAR_FILE)).to_pandas(),
            storage.read_parquet(storage.join(directory, CO_ENGAGEMENT_FILE)).to_pandas(),
            meta,
        )

    def lists(
        self, histories, n_queries: int, engaged: np.ndarray | None = None
    ) -> dict[str, RankedLists]:
        """Each served source's lists for ``n_queries`` queries, ``per_source`` long,
        without what each query's user engaged with (``engaged``: ``engaged_keys``)
        (``histories``: each query's engagement history, newest first, or None)."""
        n_items = len(self.item_index)
        engaged = np.zeros(0, dtype=np.int64) if engaged is None else engaged
        lists = {}
        if POPULAR in self.served:
            popular = RankedLists.of_matrix(np.tile(self.popular_rows, (n_queries, 1)))
            lists[POPULAR] = popular.without(engaged, n_items).head(self.per_source)
        if CO_ENGAGEMENT in self.served and histories is not None:
            lists[CO_ENGAGEMENT] = self.co_engaged(histories, engaged)
        return lists

    def co_engaged(self, histories, engaged: np.ndarray | None = None) -> RankedLists:
        """Per query, the neighbours of its last ``history`` history items, scored by
        their summed weights, best first, at most ``per_source``; items of the history
        itself, and the ``engaged`` keys, are left out (the watched rule would drop
        them)."""
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        flat = np.concatenate([np.asarray(h, dtype=object) for h in histories] or [[]])
        query_of = np.repeat(np.arange(len(histories)), lengths)
        # Position in each history (newest first, as the join writes it).
        position = np.arange(len(flat)) - (np.cumsum(lengths) - lengths)[query_of]
        rows = self.item_index.get_indexer(flat.astype(str)) if len(flat) else np.zeros(0, int)
        n_items = len(self.item_index)
        seen = np.unique(query_of.astype(np.int64) * n_items + rows)
        if engaged is not None:
            seen = np.union1d(seen, engaged)
        keep = (position < self.history) & (rows >= 0)
        query_of, rows = query_of[keep], rows[keep]
        # Gather every history item's neighbour list at once.
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        offsets = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        pair_query = np.repeat(query_of, counts)
        keys = pair_query.astype(np.int64) * n_items + self.neighbors[offsets]
        unique, inverse = np.unique(keys, return_inverse=True)
        scores = np.bincount(inverse, weights=self.weights[offsets], minlength=len(unique))
        fresh = ~np.isin(unique, seen)
        unique, scores = unique[fresh], scores[fresh]
        query_of, rows = unique // n_items, unique % n_items
        order = np.lexsort((rows, -scores, query_of))
        query_of, rows = query_of[order], rows[order]
        rank = rank_within_query(query_of)
        top = rank < self.per_source
        return RankedLists(query_of[top], rows[top], rank[top])


def load_candidate_sources(directory: str, item_index: pd.Index) -> "CandidateSources | None":
    """The sources pushed in ``directory``, or None where none were (older pushes,
    or a run that serves the two-tower alone)."""
    if not directory or not storage.exists(storage.join(directory, SOURCES_FILE)):
        return None
    return CandidateSources.load(directory, item_index)
