"""Evaluate: full-catalog retrieval recall against popularity; the ranker's AUC,
normalized entropy and calibration; the whole funnel (retrieval -> ranking ->
re-ranking, as served) against the retrieval order alone; then a blessing with a
human-readable reason."""

import functools
import json
import os
from dataclasses import dataclass

import recsys  # noqa: F401

import numpy as np
import pandas as pd
import tensorflow as tf

from components.evaluate import gate, report
from components.features import preprocessing
from components.push import serving_root as root_
from components.rerank.rerank import RerankConfig
from components.train_ranking.train_ranking import (PROBABILITY_OUTPUT, WATCH_OUTPUT,
                                                    WATCH_SECONDS)
from components.train_retrieval.train_retrieval import QUERY_EMBEDDING_SIGNATURE_OUTPUT
from recsys import modeling
from recsys.funnel import FeatureSnapshot, Funnel, InProcessBackend
from recsys.tables import read_dataset

# Cut-offs of the Recall@K curve in the HTML report.
CURVE_KS = [1, 2, 5, 10, 20, 50, 100]


@functools.lru_cache(maxsize=8)
def serving_fn(saved_model_dir: str):
    """A SavedModel's serving signature, loaded once per path in this process."""
    return tf.saved_model.load(saved_model_dir).signatures["serving_default"]


def call_in_batches(fn, frame: pd.DataFrame, output: str) -> np.ndarray:
    return modeling.predict_in_batches(lambda tensors: fn(**tensors)[output], frame,
                                       fn.structured_input_signature[1])


def outputs_in_batches(fn, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every output of a serving signature over ``frame``."""
    names = sorted(fn.structured_outputs)
    stacked = modeling.predict_in_batches(
        lambda tensors: np.stack([fn(**tensors)[name].numpy() for name in names], axis=1),
        frame, fn.structured_input_signature[1])
    return {name: stacked[:, i] for i, name in enumerate(names)}


def retrieval_task(train_examples: pd.DataFrame, eval_examples: pd.DataFrame):
    """Eval users, their query features and positives, and the items to mask.

    Positives are items a user clicked in the eval window and never clicked in
    training (those are masked, so they could never count as hits). Each user is
    queried with the features of their first eval impression, as serving would
    have seen them then.
    """
    train_clicks = train_examples.loc[train_examples[preprocessing.LABEL] == 1,
                                      ["user_id", "item_id"]].drop_duplicates()
    eval_clicks = eval_examples.loc[eval_examples[preprocessing.LABEL] == 1,
                                    ["user_id", "item_id"]].drop_duplicates()
    seen = eval_clicks.merge(train_clicks, on=["user_id", "item_id"], how="left", indicator=True)
    positives = seen.loc[seen["_merge"] == "left_only", ["user_id", "item_id"]]
    users = np.sort(positives["user_id"].unique())
    return users, first_examples(eval_examples, users), positives, train_clicks


def first_examples(examples: pd.DataFrame, users: np.ndarray) -> pd.DataFrame:
    """Each of ``users``' earliest example, in the order of ``users``: the features
    serving had for the user's first request of the window."""
    # event_id breaks ties: the join writes examples in no particular order.
    return (examples.sort_values(["event_ts", "event_id"])
            .drop_duplicates("user_id").set_index("user_id").loc[users].reset_index())


def rank_catalog(scores: np.ndarray, users: np.ndarray, item_ids: np.ndarray,
                 masked: pd.DataFrame, k: int) -> np.ndarray:
    """Top-k catalog indices per user, after masking each user's training items."""
    scores = scores.astype(np.float64, copy=True)
    user_pos = pd.Index(users).get_indexer(masked["user_id"])
    item_pos = pd.Index(item_ids).get_indexer(masked["item_id"])
    keep = (user_pos >= 0) & (item_pos >= 0)
    scores[user_pos[keep], item_pos[keep]] = -np.inf
    return modeling.top_k(scores, k)


def hits_and_counts(top: np.ndarray, users: np.ndarray, item_ids: np.ndarray,
                    positives: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(users x ranks boolean matrix: is the item at that rank a positive, each
    user's number of positives)."""
    hit_matrix = np.zeros((len(users), len(item_ids)), dtype=bool)
    user_pos = pd.Index(users).get_indexer(positives["user_id"])
    item_pos = pd.Index(item_ids).get_indexer(positives["item_id"])
    keep = (user_pos >= 0) & (item_pos >= 0)
    hit_matrix[user_pos[keep], item_pos[keep]] = True
    n_positives = np.bincount(user_pos[user_pos >= 0], minlength=len(users))
    return np.take_along_axis(hit_matrix, top, axis=1), n_positives


def recall_per_user(hits: np.ndarray, n_positives: np.ndarray, k: int) -> np.ndarray:
    """|top-k ∩ positives| / |positives| per user."""
    return hits[:, :k].sum(axis=1) / np.maximum(n_positives, 1)


def ndcg_per_user(hits: np.ndarray, n_positives: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance NDCG@k per user: DCG of the list over the DCG of an ideal
    list with min(k, |positives|) hits on top."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discounts[:hits[:, :k].shape[1]]).sum(axis=1)
    ideal = np.cumsum(discounts)[np.clip(np.minimum(n_positives, k), 1, k) - 1]
    return np.where(n_positives > 0, dcg / ideal, 0.0)


@dataclass
class Slices:
    """Who and what the per-slice checks look at, fixed once per run so candidate and
    champion are sliced identically: new users (no training click), heavy users (at
    least the top decile of training clicks among the evaluated users), and the most
    frequent item categories of the eval impressions."""
    train_clicks_per_user: pd.Series
    heavy_floor: float
    categories: list

    @classmethod
    def of(cls, users: np.ndarray, train_clicks: pd.DataFrame,
           eval_examples: pd.DataFrame | None = None, top_categories: int = 0) -> "Slices":
        per_user = train_clicks["user_id"].value_counts()
        evaluated = per_user.reindex(users, fill_value=0).to_numpy()
        heavy_floor = max(np.quantile(evaluated, 0.9), 1) if len(evaluated) else 1
        categories = [] if eval_examples is None else list(
            eval_examples["category"].astype(str).value_counts().index[:top_categories])
        return cls(per_user, heavy_floor, categories)

    def masks(self, user_ids, categories=None) -> dict[str, np.ndarray]:
        """Boolean masks over rows given each row's user (and item category, for the
        category slices)."""
        clicks = self.train_clicks_per_user.reindex(np.asarray(user_ids), fill_value=0).to_numpy()
        masks = {"all": np.ones(len(clicks), bool), "new_users": clicks == 0,
                 "heavy_users": clicks >= self.heavy_floor}
        if self.categories:
            categories = np.asarray(categories).astype(str)
        for category in self.categories:
            masks[f"category={category}"] = categories == category
        return masks


def ranking_metrics(top: np.ndarray, users: np.ndarray, item_ids: np.ndarray,
                    positives: pd.DataFrame, ks: list[int],
                    slices: dict[str, np.ndarray]) -> dict:
    """Recall@k for each k and NDCG@10, overall and per slice (with its user count)."""
    hits, n_positives = hits_and_counts(top, users, item_ids, positives)
    per_user = {f"recall_at_{k}": recall_per_user(hits, n_positives, k) for k in ks}
    per_user["ndcg_at_10"] = ndcg_per_user(hits, n_positives, 10)
    metrics = {name: float(values.mean()) for name, values in per_user.items()}
    for slice_name, members in slices.items():
        metrics[f"{slice_name}_users"] = int(members.sum())
        for name, values in per_user.items():
            metrics[f"{slice_name}_{name}"] = (float(values[members].mean()) if members.any()
                                               else float("nan"))
    return metrics


def evaluate_retrieval(query_model_dir: str, item_embeddings_dir: str, retrieval_model_dir: str,
                       task: tuple, ks: list[int]) -> dict:
    """``task`` is ``retrieval_task(train_examples, eval_examples)``."""
    users, queries, positives, train_clicks = task
    if len(users) == 0:
        raise ValueError("evaluate: no eval user clicked an item new to them; "
                         "retrieval cannot be evaluated. Lengthen eval_days.")
    table = read_dataset(item_embeddings_dir)
    item_ids = table["item_id"].astype(str).to_numpy()
    item_matrix = np.stack(table["embedding"].to_numpy())
    query_matrix = call_in_batches(serving_fn(query_model_dir), queries,
                                   QUERY_EMBEDDING_SIGNATURE_OUTPUT)
    model_scores = query_matrix @ item_matrix.T
    counts = train_clicks["item_id"].value_counts()
    popularity = counts.reindex(item_ids, fill_value=0).to_numpy(dtype=np.float64)
    popularity_scores = np.broadcast_to(popularity, model_scores.shape)

    curve_ks = sorted(set(CURVE_KS) | set(ks))
    max_k = max(curve_ks)
    model_top = rank_catalog(model_scores, users, item_ids, train_clicks, max_k)
    popularity_top = rank_catalog(popularity_scores, users, item_ids, train_clicks, max_k)
    slices = {name: mask for name, mask in Slices.of(users, train_clicks).masks(users).items()
              if name != "all"}
    model_metrics = ranking_metrics(model_top, users, item_ids, positives, curve_ks, slices)
    popularity_metrics = ranking_metrics(popularity_top, users, item_ids, positives, curve_ks,
                                         slices)
    curve = {"k": curve_ks,
             "two_tower": [model_metrics[f"recall_at_{k}"] for k in curve_ks],
             "popularity": [popularity_metrics[f"recall_at_{k}"] for k in curve_ks]}
    reported = [f"recall_at_{k}" for k in ks] + ["ndcg_at_10"]
    metrics = {"eval_users": int(len(users)), "catalog_items": int(len(item_ids))}
    for name in reported:
        metrics[name] = model_metrics[name]
        metrics[f"popularity_{name}"] = popularity_metrics[name]
    for slice_name in slices:
        metrics[f"{slice_name}_users"] = model_metrics[f"{slice_name}_users"]
        for name in reported:
            metrics[f"{slice_name}_{name}"] = model_metrics[f"{slice_name}_{name}"]
            metrics[f"{slice_name}_popularity_{name}"] = popularity_metrics[f"{slice_name}_{name}"]
    for k in (10, 100):
        metrics[f"catalog_coverage_at_{k}"] = float(
            len(np.unique(model_top[:, :k])) / len(item_ids))
    check_serving_agrees(retrieval_model_dir, queries.head(16), model_scores[:16], item_ids)
    return metrics, curve


def check_serving_agrees(retrieval_model_dir: str, queries: pd.DataFrame,
                         expected_scores: np.ndarray, item_ids: np.ndarray) -> None:
    """The exported serving model must score like the towers it was built from."""
    serve = serving_fn(retrieval_model_dir)
    served = serve(**modeling.raw_tensors(queries, serve.structured_input_signature[1]))
    served_ids = served["item_ids"].numpy().astype(str)
    served_scores = served["scores"].numpy()
    positions = pd.Index(item_ids).get_indexer(served_ids.ravel()).reshape(served_ids.shape)
    recomputed = np.take_along_axis(expected_scores, positions, axis=1)
    if not np.allclose(recomputed, served_scores, atol=1e-4):
        raise AssertionError("evaluate: the exported retrieval model's scores differ from the "
                             "query tower and item embeddings it was built from; export is broken")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC as the Mann-Whitney statistic (ties get average ranks)."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def roc_curve(labels: np.ndarray, scores: np.ndarray, points: int = 50):
    thresholds = np.quantile(scores, np.linspace(0, 1, points))[::-1]
    positives, negatives = max((labels == 1).sum(), 1), max((labels == 0).sum(), 1)
    tpr = [float(((scores >= t) & (labels == 1)).sum() / positives) for t in thresholds]
    fpr = [float(((scores >= t) & (labels == 0)).sum() / negatives) for t in thresholds]
    return fpr, tpr, [float(t) for t in thresholds]


def normalized_entropy(labels: np.ndarray, probabilities: np.ndarray, prior: float) -> float:
    """Log loss over the log loss of always predicting the training click rate
    (He et al., ADKDD 2014): below 1 the model knows more than the base rate."""
    return log_loss(labels, probabilities) / log_loss(labels, np.full(len(labels), prior))


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> dict:
    """Mean predicted vs observed click rate in equal-count bins of the prediction
    (equal-width bins would put almost every impression of a low-CTR feed in one)."""
    order = np.argsort(probabilities, kind="stable")
    groups = [g for g in np.array_split(order, bins) if len(g)]
    return {"predicted": [float(probabilities[g].mean()) for g in groups],
            "observed": [float(labels[g].mean()) for g in groups],
            "count": [int(len(g)) for g in groups]}


def expected_calibration_error(curve: dict) -> float:
    """Size-weighted mean |predicted - observed| over the bins of ``calibration``."""
    count = np.asarray(curve["count"], dtype=float)
    gap = np.abs(np.asarray(curve["predicted"]) - np.asarray(curve["observed"]))
    return float((gap * count).sum() / count.sum()) if count.sum() else float("nan")


def evaluate_ranking(ranking_model_dir: str, train_examples: pd.DataFrame,
                     eval_examples: pd.DataFrame) -> tuple[dict, dict]:
    labels = eval_examples[preprocessing.LABEL].to_numpy()
    outputs = outputs_in_batches(serving_fn(ranking_model_dir), eval_examples)
    probabilities = outputs[PROBABILITY_OUTPUT]
    prior = float(train_examples[preprocessing.LABEL].mean())
    curve = calibration(labels, probabilities)
    metrics = {
        "eval_examples": int(len(labels)),
        "auc": roc_auc(labels, probabilities),
        "logloss": log_loss(labels, probabilities),
        "normalized_entropy": normalized_entropy(labels, probabilities, prior),
        "prior_ctr": prior,
        "prior_logloss": log_loss(labels, np.full(len(labels), prior)),
        "mean_predicted_ctr": float(probabilities.mean()),
        "eval_ctr": float(labels.mean()),
        "calibration_ratio": float(probabilities.mean() / max(labels.mean(), 1e-12)),
        "expected_calibration_error": expected_calibration_error(curve),
    }
    watched = (labels == 1) & (eval_examples[WATCH_SECONDS].to_numpy() > 0)
    if watched.any() and outputs[WATCH_OUTPUT][watched].any():
        predicted = outputs[WATCH_OUTPUT][watched]
        observed = eval_examples[WATCH_SECONDS].to_numpy()[watched]
        metrics["watch_time_ratio"] = float(predicted.mean() / observed.mean())
        metrics["watch_time_mae_seconds"] = float(np.abs(predicted - observed).mean())
    return metrics, {"roc": roc_curve(labels, probabilities), "calibration": curve}


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of exposure: 0 when every item is shown equally often,
    (n - 1) / n when one item takes every impression."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    if len(x) == 0 or x.sum() == 0:
        return 0.0
    ranks = np.arange(1, len(x) + 1)
    return float(((2 * ranks - len(x) - 1) @ x) / (len(x) * x.sum()))


def intra_list_diversity(page_rows: list[np.ndarray], embeddings: np.ndarray) -> float:
    """Mean over pages of the mean pairwise cosine distance (1 - cosine similarity)
    of the page's item-tower embeddings; pages under two items are skipped."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    values = []
    for rows in page_rows:
        if len(rows) >= 2:
            similarity = unit[rows] @ unit[rows].T
            values.append(1.0 - similarity[np.triu_indices(len(rows), 1)].mean())
    return float(np.mean(values)) if values else float("nan")


def page_metrics(pages: list[np.ndarray], users: np.ndarray, positives: pd.DataFrame,
                 catalog: np.ndarray, embeddings: np.ndarray, k: int) -> dict:
    """NDCG@10, Recall@k, intra-list diversity, catalog coverage and exposure Gini of
    one page of item ids per user (pages may be shorter than k)."""
    catalog_index = pd.Index(catalog)
    page_rows = [catalog_index.get_indexer(page) for page in pages]
    hit_matrix = np.zeros((len(users), max(k, 10)), dtype=bool)
    positive_sets = positives.groupby("user_id")["item_id"].agg(set)
    n_positives = positive_sets.map(len).reindex(users, fill_value=0).to_numpy()
    for row, (user, page) in enumerate(zip(users, pages)):
        mine = positive_sets.get(user, set())
        hit_matrix[row, :len(page)] = [item in mine for item in page[:hit_matrix.shape[1]]]
    shown = np.concatenate(page_rows + [np.zeros(0, int)])
    shown = shown[shown >= 0]
    exposure = np.bincount(shown, minlength=len(catalog))
    return {f"recall_at_{k}": float(recall_per_user(hit_matrix, n_positives, k).mean()),
            "ndcg_at_10": float(ndcg_per_user(hit_matrix, n_positives, 10).mean()),
            "intra_list_diversity": intra_list_diversity(
                [rows[rows >= 0] for rows in page_rows], embeddings),
            "catalog_coverage": float(len(np.unique(shown)) / len(catalog)),
            "exposure_gini": gini(exposure),
            "mean_page_length": float(np.mean([len(page) for page in pages]))}


def retrieval_impression_auc(query_model_dir: str, item_embeddings_dir: str,
                             eval_examples: pd.DataFrame) -> float:
    """AUC of the two-tower score (query . item embedding) on the eval impressions: the
    ranker's task, so the two stages can be compared on it."""
    queries = call_in_batches(serving_fn(query_model_dir), eval_examples,
                              QUERY_EMBEDDING_SIGNATURE_OUTPUT)
    table = read_dataset(item_embeddings_dir).set_index("item_id")
    rows = table.index.get_indexer(eval_examples["item_id"].astype(str))
    matrix = np.stack(table["embedding"].to_numpy())
    scores = np.where(rows >= 0, (queries * matrix[np.maximum(rows, 0)]).sum(axis=1), -np.inf)
    return roc_auc(eval_examples[preprocessing.LABEL].to_numpy(), scores)


def evaluate_funnel(retrieval_model_dir: str, ranking_model_dir: str, item_embeddings_dir: str,
                    eval_item_snapshot_dir: str, task: tuple, config: RerankConfig) -> dict:
    """The funnel as served (``recsys.funnel``: retrieval top-N, ranking, re-ranking
    to ``config.k``) for each eval user's first request, against the retrieval order
    alone (the same candidates, minus the user's history, cut to k). Items carry
    their features from the start of the eval split, so no eval-window statistic
    reaches the ranker."""
    users, queries, positives, _ = task
    items = read_dataset(eval_item_snapshot_dir)
    embeddings = read_dataset(item_embeddings_dir)
    features = FeatureSnapshot(None, items, embeddings)
    backend = InProcessBackend({"retrieval": retrieval_model_dir, "ranking": ranking_model_dir})
    funnel = Funnel(backend, features, config)
    funnel_pages = [page["item_id"].to_numpy() for page, _, _ in funnel.pages(queries)]
    retrieved = call_in_batches(serving_fn(retrieval_model_dir), queries, "item_ids")
    retrieval_pages = []
    for ids, history in zip(retrieved, queries["user_history_items"]):
        ids = np.array([v.decode() if isinstance(v, bytes) else v for v in ids], dtype=object)
        retrieval_pages.append(ids[~np.isin(ids, np.asarray(history, dtype=object))][:config.k])
    catalog = features.item_index.to_numpy()
    metrics = {"funnel_k": config.k, "candidates_per_user": int(retrieved.shape[1])}
    for name, pages in (("funnel", funnel_pages), ("retrieval_order", retrieval_pages)):
        for metric, value in page_metrics(pages, users, positives, catalog,
                                          features.embeddings, config.k).items():
            metrics[f"{name}_{metric}"] = value
    return metrics


def served_top_k(retrieval_model_dir: str, users: np.ndarray, queries: pd.DataFrame,
                 masked: pd.DataFrame, k: int) -> pd.DataFrame:
    """A retrieval serving model's own top-K list per user (user_id, item_id), with
    the user's training items removed afterwards, cut to k: how the model performs
    as deployed. The list cannot be widened, so candidate and champion are treated
    identically."""
    served = call_in_batches(serving_fn(retrieval_model_dir), queries, "item_ids")
    ranked = pd.DataFrame({"user_id": np.repeat(users, served.shape[1]),
                           "item_id": served.astype(str).ravel(),
                           "rank": np.tile(np.arange(served.shape[1]), len(users))})
    ranked = ranked.merge(masked.assign(_masked=True), on=["user_id", "item_id"], how="left")
    ranked = ranked[ranked["_masked"].isna()].sort_values(["user_id", "rank"], kind="stable")
    return ranked.groupby("user_id", sort=False).head(k)[["user_id", "item_id"]]


def served_metrics(models: dict[str, str], task: tuple, eval_examples: pd.DataFrame,
                   slices: Slices, k: int) -> tuple[dict, dict]:
    """Served Recall@k and ranking AUC, overall and per slice, of one pair of serving
    models: ({metric: {slice: value}}, {metric: {slice: positives}}). A category
    slice of retrieval is the recall of the eval positives in that category. The
    same code scores the candidate and the champion."""
    users, queries, positives, train_clicks = task
    category_of = eval_examples.drop_duplicates("item_id").set_index("item_id")["category"]
    top = served_top_k(models["retrieval"], users, queries, train_clicks, k)
    hit = positives.merge(top.assign(_hit=True), on=["user_id", "item_id"], how="left")
    hit["_hit"] = hit["_hit"].notna()
    labels = eval_examples[preprocessing.LABEL].to_numpy()
    probabilities = call_in_batches(serving_fn(models["ranking"]), eval_examples,
                                    PROBABILITY_OUTPUT)
    positive_rows = slices.masks(hit["user_id"], category_of.reindex(hit["item_id"]))
    impression_rows = slices.masks(eval_examples["user_id"], eval_examples["category"])
    recall_name, auc_name = f"served Recall@{k}", "ranking AUC"
    values, sizes = {recall_name: {}, auc_name: {}}, {recall_name: {}, auc_name: {}}
    for name in positive_rows:
        per_user = hit[positive_rows[name]].groupby("user_id")["_hit"].mean()
        values[recall_name][name] = float(per_user.mean()) if len(per_user) else float("nan")
        sizes[recall_name][name] = int(len(per_user))
        mask = impression_rows[name]
        values[auc_name][name] = roc_auc(labels[mask], probabilities[mask])
        sizes[auc_name][name] = int(labels[mask].sum())
    return values, sizes


def champion_checks(serving_root: str, candidate: dict[str, str], task: tuple,
                    eval_examples: pd.DataFrame, thresholds: gate.Thresholds) -> tuple[list, dict]:
    """Change checks of the candidate against the version serving now, both scored on
    the same eval data here. Returns (checks, a summary for the blessing)."""
    served = root_.served_versions(serving_root) if serving_root else {}
    if not thresholds.compare_with_champion:
        return [], {"version": served.get("retrieval"),
                    "note": "not compared with the serving model: compare_with_champion is false"}
    if not served:
        return [], {"version": None, "note": "no model serving yet: value thresholds only"}
    champion = {name: os.path.join(serving_root, name, str(served[name])) for name in candidate
                if name in served}
    version = served.get("retrieval")
    label = ", ".join(f"{name} {served[name]}" for name in sorted(champion))
    if set(champion) != set(candidate):
        note = f"models.config serves {sorted(served)}, not every one of {sorted(candidate)}"
        return gate.champion_unavailable(note, thresholds), {"version": version, "note": note}
    users, _, _, train_clicks = task
    slices = Slices.of(users, train_clicks, eval_examples, thresholds.slice_top_categories)
    scored = {}
    try:
        for role, models in (("candidate", candidate), ("champion", champion)):
            scored[role] = served_metrics(models, task, eval_examples, slices,
                                          thresholds.recall_k)
    except (KeyError, ValueError, TypeError, OSError, tf.errors.OpError) as error:
        # e.g. the serving model expects features this run no longer has
        note = (f"serving version ({label}) cannot be scored on this run's data "
                f"({type(error).__name__}: {str(error).splitlines()[0][:200]})")
        return gate.champion_unavailable(note, thresholds), {"version": version, "note": note}
    (candidate_values, sizes), (champion_values, _) = scored["candidate"], scored["champion"]
    checks = gate.change_checks(candidate_values, champion_values, sizes,
                                version if len(set(served[n] for n in champion)) == 1 else label,
                                thresholds)
    return checks, {"version": version, "versions": {n: served[n] for n in champion},
                    "note": f"compared with serving version {label} on the same eval data",
                    "candidate": candidate_values, "champion": champion_values, "sizes": sizes}


def read_infra_validation(path: str) -> dict:
    """Infra validation's result; a missing or unreadable one fails closed in the gate."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        return {"models": {}, "error": f"{path}: {error}"}


def evaluate(train_examples_dir: str, eval_examples_dir: str, query_model_dir: str,
             item_embeddings_dir: str, retrieval_model_dir: str, ranking_model_dir: str,
             eval_item_snapshot_dir: str, infra_validation_path: str,
             thresholds: gate.Thresholds, rerank_config: RerankConfig, blessing_path: str,
             serving_root: str = "") -> dict:
    train_examples = read_dataset(train_examples_dir)
    eval_examples = read_dataset(eval_examples_dir)
    ks = sorted({10, thresholds.recall_k, 100})
    task = retrieval_task(train_examples, eval_examples)
    retrieval, recall_curve = evaluate_retrieval(query_model_dir, item_embeddings_dir,
                                                 retrieval_model_dir, task, ks)
    ranking, curves = evaluate_ranking(ranking_model_dir, train_examples, eval_examples)
    funnel = evaluate_funnel(retrieval_model_dir, ranking_model_dir, item_embeddings_dir,
                             eval_item_snapshot_dir, task, rerank_config)
    funnel["retrieval_score_impression_auc"] = retrieval_impression_auc(
        query_model_dir, item_embeddings_dir, eval_examples)
    infra = read_infra_validation(infra_validation_path)
    change, champion = champion_checks(
        serving_root, {"retrieval": retrieval_model_dir, "ranking": ranking_model_dir},
        task, eval_examples, thresholds)
    checks = gate.value_checks(retrieval, ranking, thresholds) + change + gate.infra_checks(infra)
    blessing = gate.decide(checks, thresholds, champion["note"])
    blessing.update(champion=champion, infra_validation=infra,
                    metrics={"retrieval": retrieval, "ranking": ranking, "funnel": funnel})
    with open(blessing_path, "w") as handle:
        json.dump(blessing, handle, indent=2, default=_jsonable)
    return {"retrieval": retrieval, "ranking": ranking, "funnel": funnel, "roc": curves["roc"],
            "blessing": blessing, "champion": champion,
            "reliability_png": report.reliability_png(curves["calibration"]),
            "markdown": report_markdown(retrieval, ranking, funnel, blessing),
            "html": report.render(retrieval, ranking, funnel, blessing, recall_curve, curves)}


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


def report_markdown(retrieval: dict, ranking: dict, funnel: dict, blessing: dict) -> str:
    names = [f"recall_at_{kk}" for kk in sorted(int(key.split("_")[-1]) for key in retrieval
                                                if key.startswith("recall_at_"))]
    names.append("ndcg_at_10")
    label = {name: name.replace("recall_at_", "Recall@").replace("ndcg_at_", "NDCG@")
             for name in names}
    rows = [f"| {label[n]} | {retrieval[n]:.4f} | {retrieval[f'popularity_{n}']:.4f} |"
            for n in names]
    slice_rows = [
        f"| {name.replace('_', ' ')} | {retrieval[f'{name}_users']} | "
        + " | ".join(f"{retrieval[f'{name}_{n}']:.4f} / {retrieval[f'{name}_popularity_{n}']:.4f}"
                     for n in names) + " |"
        for name in ("new_users", "heavy_users") if f"{name}_users" in retrieval]
    k = funnel["funnel_k"]
    funnel_rows = [f"| {title} | {funnel[f'funnel_{name}']:.4f} | "
                   f"{funnel[f'retrieval_order_{name}']:.4f} |"
                   for name, title in report.funnel_metric_names(k)]
    watch = (f" Watch time of clicks: predicted / observed {ranking['watch_time_ratio']:.3f}."
             if "watch_time_ratio" in ranking else "")
    return "\n".join([
        "## Evaluation", "",
        f"**{blessing['reason']}**", "",
        "Checks, failing first:", "", gate.checks_markdown(blessing), "",
        f"Retrieval over the full catalog ({retrieval['catalog_items']} items, "
        f"{retrieval['eval_users']} eval users, training items masked; catalog coverage of "
        f"the top 10: {retrieval['catalog_coverage_at_10']:.1%}):", "",
        "| metric | two-tower | popularity |", "|---|---:|---:|", *rows, "",
        "Per slice (two-tower / popularity):", "",
        "| slice | users | " + " | ".join(label[n] for n in names) + " |",
        "|---|---:|" + "---:|" * len(names), *slice_rows, "",
        f"Ranking on {ranking['eval_examples']} eval impressions: AUC {ranking['auc']:.4f}, "
        f"normalized entropy {ranking['normalized_entropy']:.4f} (log loss "
        f"{ranking['logloss']:.4f}, constant-CTR prior {ranking['prior_logloss']:.4f}), "
        f"calibration ratio {ranking['calibration_ratio']:.3f}, ECE "
        f"{ranking['expected_calibration_error']:.4f}.{watch}", "",
        f"Funnel, as served (retrieval top {funnel['candidates_per_user']} -> ranking -> "
        f"re-ranking to {k}), vs the retrieval order of the same candidates:", "",
        "| metric | funnel | retrieval order |", "|---|---:|---:|", *funnel_rows, "",
        f"On the eval impressions (the ranker's task) the two-tower score has AUC "
        f"{funnel['retrieval_score_impression_auc']:.4f}, the ranker {ranking['auc']:.4f}. "
        "Clicks in a log are clicks on what the logging policy showed, so pages that "
        "reproduce that policy score higher on them (docs/design.md, 'Funnel').", "",
    ])
