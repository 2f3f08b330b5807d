"""Retrieval quality over the full catalog: the candidates the funnel ranks (the
two-tower's merged with the other sources', ``recsys.serving.candidates``), the
two-tower alone, and popularity.

Positives are items a user clicked in the eval window and never clicked in
training (those are masked, so they could never count as hits). Each eval user is
queried with the features of their first eval impression, as serving would have
seen them then. Popularity (training clicks per item) is scored on the same
users, positives and masks, in the same step.
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys.components.evaluate.data import EvalData, TrainingClicks
from recsys.components.evaluate.metrics import (
    ListQuality,
    list_quality,
    masked_positions,
    rank_by_one_order,
    rank_catalog,
    roc_auc,
)
from recsys.components.evaluate.models import call_in_batches, serving_fn
from recsys.components.evaluate.slices import Slices
from recsys.core import modeling
from recsys.core.contracts import (
    CANDIDATE_SOURCES,
    CLICKED,
    ITEM_ID,
    ITEM_IDS,
    QUERY_EMBEDDING,
    SCORES,
    TWO_TOWER,
    USER_ID,
)
from recsys.core.features import HISTORY_COLUMNS
from recsys.core.tables import read_dataset
from recsys.serving.candidates import Merged, RankedLists, fuse, load_candidate_sources

# Cut-offs of the Recall@K curve in the HTML report.
CURVE_KS = [1, 2, 5, 10, 20, 50, 100]
HISTORY_ITEMS = HISTORY_COLUMNS[0]
# User slices reported for retrieval (the gate adds category slices).
USER_SLICES = ("new_users", "heavy_users")


@dataclass
class RetrievalTask:
    """Who is evaluated and on what: the eval users (sorted), each one's query (the
    features of their first eval impression), the positives (user, item) and the
    training clicks (user, item), which are masked."""

    users: np.ndarray
    queries: pd.DataFrame
    positives: pd.DataFrame
    train_clicks: pd.DataFrame

    @classmethod
    def of(cls, train: TrainingClicks, data: EvalData) -> "RetrievalTask":
        pairs = [USER_ID, ITEM_ID]
        train_clicks = train.pairs
        impressions = data.impressions
        eval_clicks = impressions.loc[impressions[CLICKED] == 1, pairs].drop_duplicates()
        seen = eval_clicks.merge(train_clicks, on=pairs, how="left", indicator=True)
        positives = seen.loc[seen["_merge"] == "left_only", pairs]
        users = np.sort(positives[USER_ID].unique())
        return cls(users, data.first_of(users), positives, train_clicks)


@dataclass
class RecallCurve:
    """Recall@k of the merged candidates, the two-tower alone and popularity at each
    cut-off k."""

    k: list[int]
    candidates: list[float]
    two_tower: list[float]
    popularity: list[float]


@dataclass
class RetrievalEvaluation:
    eval_users: int
    catalog_items: int
    ks: list[int]  # the cut-offs reported (10, recall_k, 100)
    # The merged candidates in their fused order (the two-tower's alone when no other
    # source is served), by slice: "all", new_users, heavy_users.
    model: dict[str, ListQuality]
    popularity: dict[str, ListQuality]
    catalog_coverage: dict[int, float]  # share of the catalog in the top k, k = 10, 100
    curve: RecallCurve = field(repr=False)
    two_tower: dict[str, ListQuality] = field(default_factory=dict)
    sources: list[str] = field(default_factory=lambda: [TWO_TOWER])
    # Per source, its share of the merged top recall_k (the source that ranked it highest;
    # what is left filled lists shorter than recall_k).
    source_share: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """Flat, as logged (the run summary, the gate and the Kubeflow UI read these):
        the merged candidates' metrics, two_tower_<metric>, popularity_<metric>,
        <slice>_<metric>, <slice>_popularity_<metric>, <slice>_users,
        catalog_coverage_at_<k> and share_from_<source> (of the top recall_k)."""
        reported = [f"recall_at_{k}" for k in self.ks] + ["ndcg_at_10"]
        metrics = {"eval_users": self.eval_users, "catalog_items": self.catalog_items}
        for name in reported:
            metrics[name] = self.model["all"].metrics()[name]
            metrics[f"two_tower_{name}"] = (self.two_tower or self.model)["all"].metrics()[name]
            metrics[f"popularity_{name}"] = self.popularity["all"].metrics()[name]
        for source, share in self.source_share.items():
            metrics[f"share_from_{source}"] = share
        for k, margin in self.model["all"].recall_margin.items():
            metrics[f"recall_at_{k}_margin"] = margin  # the 95% interval's half-width
        for slice_name in USER_SLICES:
            metrics[f"{slice_name}_users"] = self.model[slice_name].users
            for name in reported:
                metrics[f"{slice_name}_{name}"] = self.model[slice_name].metrics()[name]
                metrics[f"{slice_name}_popularity_{name}"] = self.popularity[slice_name].metrics()[
                    name
                ]
        for k, coverage in self.catalog_coverage.items():
            metrics[f"catalog_coverage_at_{k}"] = coverage
        return metrics


def item_embeddings(directory: str) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, embedding matrix) of the exported item embedding table."""
    table = read_dataset(directory)
    return table[ITEM_ID].astype(str).to_numpy(), np.stack(table["embedding"].to_numpy())


def evaluate_retrieval(
    query_model_dir: str,
    item_embeddings_dir: str,
    retrieval_model_dir: str,
    task: RetrievalTask,
    ks: list[int],
    candidate_sources_dir: str = "",
    share_k: int = 50,
) -> RetrievalEvaluation:
    """``candidate_sources_dir``: the sources merged with the two-tower's top-K, as
    the funnel merges them (empty: the two-tower alone); each source's share is of
    the merged top ``share_k``."""
    if len(task.users) == 0:
        raise ValueError(
            "evaluate: no eval user clicked an item new to them; "
            "retrieval cannot be evaluated. Lengthen eval_days."
        )
    item_ids, item_matrix = item_embeddings(item_embeddings_dir)
    query_matrix = call_in_batches(serving_fn(query_model_dir), task.queries, QUERY_EMBEDDING)
    counts = task.train_clicks[ITEM_ID].value_counts()
    popularity = counts.reindex(item_ids, fill_value=0).to_numpy(dtype=np.float64)

    def model_scores(start, stop):  # a chunk of users at a time (rank_catalog)
        return query_matrix[start:stop] @ item_matrix.T

    curve_ks = sorted(set(CURVE_KS) | set(ks))
    max_k = max(curve_ks)
    sources = load_candidate_sources(candidate_sources_dir, pd.Index(item_ids))
    width = max(max_k, sources.per_source if sources else 0)
    two_tower_top = rank_catalog(model_scores, task.users, item_ids, task.train_clicks, width)
    popularity_top = rank_by_one_order(popularity, task.users, item_ids, task.train_clicks, max_k)
    masks = Slices.of(task.users, task.train_clicks).masks(task.users)
    slices = {name: masks[name] for name in USER_SLICES}

    def quality(top):
        return list_quality(top, task.users, item_ids, task.positives, curve_ks, slices)

    two_tower, popular = quality(two_tower_top), quality(popularity_top)
    served, share = [TWO_TOWER], {}
    model_top, model = two_tower_top, two_tower
    if sources is not None:
        served = sources.served
        # Each user's training clicks are left out of every list, as serving leaves out
        # what the user engaged with (the two-tower's top is masked already).
        user_pos, item_pos = masked_positions(task.users, item_ids, task.train_clicks)
        engaged = np.unique(user_pos.astype(np.int64) * len(item_ids) + item_pos)
        merged = fuse(
            {
                TWO_TOWER: RankedLists.of_matrix(two_tower_top[:, : sources.per_source]),
                **sources.lists(task.queries[HISTORY_ITEMS].to_numpy(), len(task.users), engaged),
            },
            len(task.users),
            len(item_ids),
            sources.fusion_weights,
        )
        model_top = rank_catalog(
            merged_scores(merged, len(item_ids)), task.users, item_ids, task.train_clicks, max_k
        )
        model = quality(model_top)
        share = top_sources(merged, model_top[:, :share_k], len(item_ids))
    curve = RecallCurve(
        curve_ks,
        [model["all"].recall[k] for k in curve_ks],
        [two_tower["all"].recall[k] for k in curve_ks],
        [popular["all"].recall[k] for k in curve_ks],
    )
    coverage = {k: float(len(np.unique(model_top[:, :k])) / len(item_ids)) for k in (10, 100)}
    check_serving_agrees(retrieval_model_dir, task.queries.head(16), model_scores(0, 16), item_ids)
    return RetrievalEvaluation(
        int(len(task.users)),
        int(len(item_ids)),
        list(ks),
        model,
        popular,
        coverage,
        curve,
        two_tower,
        served,
        share,
    )


def merged_scores(merged: Merged, n_items: int):
    """``rank_catalog``'s scores of a chunk of queries: the fused score of each merged
    candidate, -inf for every other item."""

    def rows(start: int, stop: int) -> np.ndarray:
        lo, hi = np.searchsorted(merged.query_of, [start, stop])
        scores = np.full((stop - start, n_items), -np.inf)
        scores[merged.query_of[lo:hi] - start, merged.rows[lo:hi]] = merged.fused_score[lo:hi]
        return scores

    return rows


def top_sources(merged: Merged, top: np.ndarray, n_items: int) -> dict[str, float]:
    """Each source's share of the ``top`` lists' items (the source that ranked each
    highest)."""
    keys = merged.query_of.astype(np.int64) * n_items + merged.rows
    order = np.argsort(keys)
    wanted = (np.arange(len(top))[:, None] * n_items + top).ravel()
    at = np.minimum(np.searchsorted(keys[order], wanted), len(order) - 1)
    found = order[at][keys[order][at] == wanted]  # the rest filled a short list
    counts = np.bincount(merged.source[found], minlength=len(CANDIDATE_SOURCES))
    return {
        name: float(counts[i] / max(len(wanted), 1)) for i, name in enumerate(CANDIDATE_SOURCES)
    }


def check_serving_agrees(
    retrieval_model_dir: str,
    queries: pd.DataFrame,
    expected_scores: np.ndarray,
    item_ids: np.ndarray,
) -> None:
    """The exported serving model must score like the towers it was built from."""
    serve = serving_fn(retrieval_model_dir)
    served = serve(**modeling.raw_tensors(queries, serve.structured_input_signature[1]))
    served_ids = served[ITEM_IDS].numpy().astype(str)
    served_scores = served[SCORES].numpy()
    positions = pd.Index(item_ids).get_indexer(served_ids.ravel()).reshape(served_ids.shape)
    recomputed = np.take_along_axis(expected_scores, positions, axis=1)
    if not np.allclose(recomputed, served_scores, atol=1e-4):
        raise AssertionError(
            "evaluate: the exported retrieval model's scores differ from the "
            "query tower and item embeddings it was built from; export is broken"
        )


def retrieval_impression_auc(
    query_model_dir: str, item_embeddings_dir: str, data: EvalData
) -> float:
    """AUC of the two-tower score (query . item embedding) on the eval impressions: the
    ranker's task, so the two stages can be compared on it."""
    fn = serving_fn(query_model_dir)
    item_ids, matrix = item_embeddings(item_embeddings_dir)
    index = pd.Index(item_ids)

    def scores(frame: pd.DataFrame) -> np.ndarray:
        queries = call_in_batches(fn, frame, QUERY_EMBEDDING)
        rows = index.get_indexer(frame[ITEM_ID].astype(str))
        return np.where(rows >= 0, (queries * matrix[np.maximum(rows, 0)]).sum(axis=1), -np.inf)

    return roc_auc(data.impressions[CLICKED].to_numpy(), data.per_batch(scores))
