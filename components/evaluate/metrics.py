"""Metric math, over numpy arrays and small frames: no models, no files.

Ranked lists (Recall@k, NDCG@10 over a full catalog, with each user's training
items masked), pages (the same plus diversity, coverage and exposure), and
probabilities (AUC, log loss, normalized entropy, calibration). Each function
states its definition; the tests check them against brute force.
"""

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys.core.contracts import ITEM_ID, USER_ID
from recsys.core.ranking import top_k

# --- ranked lists ---------------------------------------------------------------------


# Scores held at once when a catalog is ranked for many users (float32: 80 MB, and
# argpartition's int64 positions beside them).
SCORE_CHUNK_ELEMENTS = 20_000_000


def masked_positions(users: np.ndarray, item_ids: np.ndarray, masked: pd.DataFrame):
    """(user positions, item positions) of ``masked``'s known pairs, sorted by user."""
    user_pos = pd.Index(users).get_indexer(masked[USER_ID])
    item_pos = pd.Index(item_ids).get_indexer(masked[ITEM_ID])
    keep = (user_pos >= 0) & (item_pos >= 0)
    order = np.argsort(user_pos[keep], kind="stable")
    return user_pos[keep][order], item_pos[keep][order]


def rank_catalog(
    scores, users: np.ndarray, item_ids: np.ndarray, masked: pd.DataFrame, k: int
) -> np.ndarray:
    """Top-k catalog indices per user, after masking each user's training items.
    ``scores``: a users x items matrix, or ``scores(start, stop)`` giving the rows of
    ``users[start:stop]``, called for a chunk of users at a time so that a large
    catalog never needs a users x items matrix. Scores keep their dtype (a float32
    model's are ranked as float32: half the memory traffic of float64)."""
    user_pos, item_pos = masked_positions(users, item_ids, masked)
    rows_of = scores if callable(scores) else (lambda start, stop: scores[start:stop])
    step = max(1, SCORE_CHUNK_ELEMENTS // max(len(item_ids), 1))
    tops = []
    for start in range(0, len(users), step):
        stop = min(start + step, len(users))
        chunk = np.asarray(rows_of(start, stop))
        if not (chunk.flags.owndata and chunk.flags.writeable):
            chunk = chunk.copy()  # masked in place below: never write into the caller's
        lo, hi = np.searchsorted(user_pos, [start, stop])
        chunk[user_pos[lo:hi] - start, item_pos[lo:hi]] = -np.inf
        tops.append(top_k(chunk, k))
    return np.concatenate(tops) if tops else np.zeros((0, k), dtype=np.int64)


def rank_by_one_order(
    item_scores: np.ndarray, users: np.ndarray, item_ids: np.ndarray, masked: pd.DataFrame, k: int
) -> np.ndarray:
    """``rank_catalog`` for scores every user shares (popularity): the catalog is
    sorted once, and each user's list is that order without the user's masked items,
    so the cost grows with users x (k + masked items), not users x catalog. Equal to
    ``rank_catalog`` of the broadcast scores wherever a user has k unmasked items."""
    order = np.argsort(-item_scores, kind="stable")  # ties: lower index first
    rank_of = np.empty(len(order), dtype=np.int64)
    rank_of[order] = np.arange(len(order))
    user_pos, item_pos = masked_positions(users, item_ids, masked)
    masked_ranks = rank_of[item_pos]
    per_user = np.bincount(user_pos, minlength=len(users))
    k = min(k, len(order))
    tops = []
    step = max(1, SCORE_CHUNK_ELEMENTS // max(k + int(per_user.max(initial=0)), 1))
    for start in range(0, len(users), step):
        stop = min(start + step, len(users))
        # A user's k-th unmasked item is within the first k + (their masked) of the order.
        width = min(len(order), k + int(per_user[start:stop].max(initial=0)))
        lo, hi = np.searchsorted(user_pos, [start, stop])
        inside = masked_ranks[lo:hi] < width
        blocked = np.zeros((stop - start, width), dtype=bool)
        blocked[user_pos[lo:hi][inside] - start, masked_ranks[lo:hi][inside]] = True
        # Unblocked ranks first, each in rank order (a stable sort of the flags).
        first = np.argsort(blocked, axis=1, kind="stable")[:, :k]
        tops.append(order[first])
    return np.concatenate(tops) if tops else np.zeros((0, k), dtype=np.int64)


def hits_and_counts(
    top: np.ndarray, users: np.ndarray, item_ids: np.ndarray, positives: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray]:
    """(users x ranks boolean matrix: is the item at that rank a positive, each
    user's number of positives), from (user, item) keys: no users x items matrix."""
    user_pos = pd.Index(users).get_indexer(positives[USER_ID])
    item_pos = pd.Index(item_ids).get_indexer(positives[ITEM_ID])
    keep = (user_pos >= 0) & (item_pos >= 0)
    n_items = max(len(item_ids), 1)
    positive_keys = np.unique(user_pos[keep].astype(np.int64) * n_items + item_pos[keep])
    top_keys = np.arange(len(top), dtype=np.int64)[:, None] * n_items + top
    n_positives = np.bincount(user_pos[user_pos >= 0], minlength=len(users))
    return np.isin(top_keys, positive_keys), n_positives


def recall_per_user(hits: np.ndarray, n_positives: np.ndarray, k: int) -> np.ndarray:
    """|top-k ∩ positives| / |positives| per user."""
    return hits[:, :k].sum(axis=1) / np.maximum(n_positives, 1)


def ndcg_per_user(hits: np.ndarray, n_positives: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance NDCG@k per user: DCG of the list over the DCG of an ideal
    list with min(k, |positives|) hits on top."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hits[:, :k] * discounts[: hits[:, :k].shape[1]]).sum(axis=1)
    ideal = np.cumsum(discounts)[np.clip(np.minimum(n_positives, k), 1, k) - 1]
    return np.where(n_positives > 0, dcg / ideal, 0.0)


@dataclass
class ListQuality:
    """Recall@k (for each k) and NDCG@10 of ranked lists, averaged over ``users``
    users (NaN where a slice has none)."""

    users: int
    recall: dict[int, float]
    ndcg_at_10: float
    recall_margin: dict[int, float] = field(default_factory=dict)  # 95% half-width
    # The slice's users' own values (recall_at_<k>, ndcg_at_10), in user order: what
    # paired intervals between two lists over the same users need.
    per_user: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def metrics(self) -> dict[str, float]:
        """As metric names: recall_at_<k>, ndcg_at_10."""
        return {
            **{f"recall_at_{k}": value for k, value in self.recall.items()},
            "ndcg_at_10": self.ndcg_at_10,
        }


def list_quality(
    top: np.ndarray,
    users: np.ndarray,
    item_ids: np.ndarray,
    positives: pd.DataFrame,
    ks: list[int],
    slices: dict[str, np.ndarray] | None = None,
) -> dict[str, ListQuality]:
    """The quality of each user's top list (``top``: catalog indices), over all users
    ("all") and over the users of each slice (name -> boolean mask over ``users``)."""
    hits, n_positives = hits_and_counts(top, users, item_ids, positives)
    recalls = {k: recall_per_user(hits, n_positives, k) for k in ks}
    ndcg = ndcg_per_user(hits, n_positives, 10)

    def mean(values, members):
        return float(values[members].mean()) if members.any() else float("nan")

    masks = {"all": np.ones(len(users), dtype=bool), **(slices or {})}
    return {
        name: ListQuality(
            int(members.sum()),
            {k: mean(values, members) for k, values in recalls.items()},
            mean(ndcg, members),
            {k: mean_margin(values[members]) for k, values in recalls.items()},
            {
                **{f"recall_at_{k}": values[members] for k, values in recalls.items()},
                "ndcg_at_10": ndcg[members],
            },
        )
        for name, members in masks.items()
    }


# --- pages ------------------------------------------------------------------------------


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
    of the page's item-tower embeddings; pages under two items are skipped. Pages of
    one length are computed together (one batched product per length)."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    values = []
    for length in sorted({len(rows) for rows in page_rows if len(rows) >= 2}):
        stacked = unit[np.stack([rows for rows in page_rows if len(rows) == length])]
        similarity = np.einsum("pid,pjd->pij", stacked, stacked)
        upper = np.triu_indices(length, 1)
        values.append(1.0 - similarity[:, upper[0], upper[1]].mean(axis=1))
    return float(np.concatenate(values).mean()) if values else float("nan")


@dataclass
class PageQuality:
    """What a set of pages (one per user, up to ``k`` items) is worth."""

    k: int
    recall: float  # Recall@k
    ndcg_at_10: float
    intra_list_diversity: float
    catalog_coverage: float
    exposure_gini: float
    mean_page_length: float

    def metrics(self) -> dict[str, float]:
        return {
            f"recall_at_{self.k}": self.recall,
            "ndcg_at_10": self.ndcg_at_10,
            "intra_list_diversity": self.intra_list_diversity,
            "catalog_coverage": self.catalog_coverage,
            "exposure_gini": self.exposure_gini,
            "mean_page_length": self.mean_page_length,
        }


def page_quality(
    pages: pd.DataFrame,
    users: np.ndarray,
    positives: pd.DataFrame,
    catalog: np.ndarray,
    embeddings: np.ndarray,
    k: int,
) -> PageQuality:
    """NDCG@10, Recall@k, intra-list diversity, catalog coverage and exposure Gini of
    one page per user of ``users``. ``pages``: long format, a row per (USER_ID,
    ITEM_ID) shown, each user's rows in page order; a user without rows has an empty
    page, and rows of other users are ignored. Pages may be shorter than k."""
    user_rows = pd.Index(users).get_indexer(pages[USER_ID])
    pages = pages.loc[user_rows >= 0, [USER_ID, ITEM_ID]]
    user_rows = user_rows[user_rows >= 0]
    position = pages.groupby(USER_ID, sort=False).cumcount().to_numpy()
    known = positives[[USER_ID, ITEM_ID]].drop_duplicates()
    # A left merge on a deduplicated right side keeps the page rows and their order.
    hit = pages.merge(known.assign(_hit=True), on=[USER_ID, ITEM_ID], how="left")["_hit"]
    hit_matrix = np.zeros((len(users), max(k, 10)), dtype=bool)
    inside = position < hit_matrix.shape[1]
    hit_matrix[user_rows[inside], position[inside]] = hit.notna().to_numpy()[inside]
    n_positives = known.groupby(USER_ID).size().reindex(users, fill_value=0).to_numpy()
    rows = pd.Index(catalog).get_indexer(pages[ITEM_ID])
    by_user = np.argsort(user_rows, kind="stable")
    page_rows = np.split(rows[by_user], np.flatnonzero(np.diff(user_rows[by_user])) + 1)
    shown = rows[rows >= 0]
    return PageQuality(
        k=k,
        recall=float(recall_per_user(hit_matrix, n_positives, k).mean()),
        ndcg_at_10=float(ndcg_per_user(hit_matrix, n_positives, 10).mean()),
        intra_list_diversity=intra_list_diversity(
            [page[page >= 0] for page in page_rows], embeddings
        ),
        catalog_coverage=float(len(np.unique(shown)) / len(catalog)),
        exposure_gini=gini(np.bincount(shown, minlength=len(catalog))),
        mean_page_length=float(len(pages) / max(len(users), 1)),
    )


# --- probabilities --------------------------------------------------------------------


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC as the Mann-Whitney statistic (ties get average ranks)."""
    positives = labels == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# --- intervals: the 95% half-width next to each gated metric -----------------------------
# Closed forms, not a bootstrap: they cost nothing, are the same on every run of the
# same data, and are the textbook ones a reader can check. Each treats its units
# (users for retrieval, impressions for ranking) as independent; impressions of one
# user are correlated, so the ranking intervals are on the narrow side.

Z_95 = 1.959964


def mean_margin(values: np.ndarray) -> float:
    """Half-width of the normal 95% interval of the mean of ``values``."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan")
    return float(Z_95 * values.std(ddof=1) / np.sqrt(len(values)))


def auc_margin(labels: np.ndarray, scores: np.ndarray) -> float:
    """Half-width of the 95% interval of the ROC AUC of ``scores``, by DeLong's
    variance (Biometrics 44, 1988) in Sun & Xu's rank form (IEEE SPL 21, 2014):
    each positive's share of negatives ranked below it, and each negative's share of
    positives above it, are the AUC's structural components."""
    positives = np.asarray(labels) == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos < 2 or n_neg < 2:
        return float("nan")
    scores = pd.Series(np.asarray(scores, dtype=float))
    overall = scores.rank(method="average").to_numpy()
    within_pos = scores[positives].rank(method="average").to_numpy()
    within_neg = scores[~positives].rank(method="average").to_numpy()
    below_each_positive = (overall[positives] - within_pos) / n_neg
    above_each_negative = 1.0 - (overall[~positives] - within_neg) / n_pos
    variance = below_each_positive.var(ddof=1) / n_pos + above_each_negative.var(ddof=1) / n_neg
    return float(Z_95 * np.sqrt(variance))


def ratio_margin(numerators: np.ndarray, denominators: np.ndarray) -> float:
    """Half-width of the 95% interval of mean(numerators) / mean(denominators) over
    paired rows, by the delta method."""
    x, y = np.asarray(numerators, dtype=float), np.asarray(denominators, dtype=float)
    n = len(x)
    if n < 2 or not y.any():
        return float("nan")
    mx, my = x.mean(), y.mean()
    covariance = np.cov(x, y, ddof=1)
    variance = (
        covariance[0, 0] / my**2
        - 2 * mx * covariance[0, 1] / my**3
        + mx**2 * covariance[1, 1] / my**4
    ) / n
    return float(Z_95 * np.sqrt(max(variance, 0.0)))


def log_losses(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Each row's log loss (probabilities clipped to [1e-7, 1 - 1e-7])."""
    p = np.clip(probabilities, 1e-7, 1 - 1e-7)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    return float(log_losses(labels, probabilities).mean())


@dataclass
class RocCurve:
    false_positive_rate: list[float]
    true_positive_rate: list[float]
    thresholds: list[float]


def roc_curve(labels: np.ndarray, scores: np.ndarray, points: int = 50) -> RocCurve:
    thresholds = np.quantile(scores, np.linspace(0, 1, points))[::-1]
    positives, negatives = max((labels == 1).sum(), 1), max((labels == 0).sum(), 1)
    tpr = [float(((scores >= t) & (labels == 1)).sum() / positives) for t in thresholds]
    fpr = [float(((scores >= t) & (labels == 0)).sum() / negatives) for t in thresholds]
    return RocCurve(fpr, tpr, [float(t) for t in thresholds])


def normalized_entropy(labels: np.ndarray, probabilities: np.ndarray, prior: float) -> float:
    """Log loss over the log loss of always predicting the training click rate
    (He et al., ADKDD 2014): below 1 the model knows more than the base rate."""
    return log_loss(labels, probabilities) / log_loss(labels, np.full(len(labels), prior))


@dataclass
class CalibrationCurve:
    """Mean predicted and observed click rate, and the size, of each bin."""

    predicted: list[float]
    observed: list[float]
    count: list[int]


def calibration(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> CalibrationCurve:
    """Mean predicted vs observed click rate in equal-count bins of the prediction
    (equal-width bins would put almost every impression of a low-CTR feed in one)."""
    order = np.argsort(probabilities, kind="stable")
    groups = [g for g in np.array_split(order, bins) if len(g)]
    return CalibrationCurve(
        [float(probabilities[g].mean()) for g in groups],
        [float(labels[g].mean()) for g in groups],
        [int(len(g)) for g in groups],
    )


def expected_calibration_error(curve: CalibrationCurve) -> float:
    """Size-weighted mean |predicted - observed| over the bins of ``calibration``."""
    count = np.asarray(curve.count, dtype=float)
    gap = np.abs(np.asarray(curve.predicted) - np.asarray(curve.observed))
    return float((gap * count).sum() / count.sum()) if count.sum() else float("nan")
