"""Re-ranking: the product's rules between the ranker's scores and the page.

Used online by ``recsys.serving.funnel`` and offline by the evaluate stage (the
funnel evaluation), so what is measured is what is served. The rules evaluate
measured are pushed with the models (``contracts.RERANK_FILE``) and are the
funnel's defaults. Not a pipeline stage: it has no KFP shim.

Stages, in this order, all deterministic (ties keep the input order):

1. hard filters: items on the blocklist, and those the request excludes, are removed;
2. duplicates: only the first (best-scored) occurrence of an item id stays;
3. watched: items the user already engaged with are removed (the history, and
   the user snapshot's watched items: the join's horizon, not the history length);
4. freshness: score * (1 + freshness_boost * 2^(-age_days / half_life_days));
5. selection of ``k`` items, greedily: maximal marginal relevance (Carbonell &
   Goldstein, SIGIR 1998) on the item-tower embeddings,
   ``lambda * relevance - (1 - lambda) * max cosine similarity to the items
   already chosen``, over candidates whose creator and category are still under
   their caps. Relevance is the boosted score min-max scaled to [0, 1] over the
   request's candidates, so ``mmr_lambda`` means the same whatever the score's
   units. With ``mmr_lambda = 1`` this is the score order under the caps.

Caps are hard: when they leave fewer than ``k`` eligible items, fewer are returned
(the result says how many were capped). An item whose creator or category is
unknown (``contracts.UNKNOWN`` or empty) is not capped by that attribute: unknown
is not one creator, and capping it would cut every page of a catalog without the
attribute to ``max_per_creator`` items.

Written with numpy rather than a library: no maintained library implements MMR
with per-attribute caps, and a few hundred candidates per request need
vectorised code, not per-item Python.
"""

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

from recsys.core.contracts import UNKNOWN

# Attribute values that say nothing about the item: never capped.
UNCAPPED = [UNKNOWN, ""]


@dataclass(frozen=True)
class RerankConfig:
    """The rules; the pipeline parameter ``rerank`` is this as JSON (its default is
    these defaults)."""

    k: int = 10
    # Caps are off by default: on the sample, the ground truth says a cap of 2 per
    # creator costs 2% of a page's value (its users have no taste for variety); a
    # product that wants variety sets them (README, "What each stage adds").
    max_per_creator: int = 0  # 0 = no cap
    max_per_category: int = 0  # 0 = no cap
    mmr_lambda: float = 1.0  # 1 = relevance only; lower trades relevance for diversity
    freshness_boost: float = 0.0  # 0 = off; 0.2 = a new item's score x 1.2
    freshness_half_life_days: float = 3.0
    drop_watched: bool = True
    blocklist: frozenset = field(default_factory=frozenset)

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"rerank k must be at least 1, got {self.k}")
        if not 0.0 <= self.mmr_lambda <= 1.0:
            raise ValueError(f"mmr_lambda must be in [0, 1], got {self.mmr_lambda}")
        if self.max_per_creator < 0 or self.max_per_category < 0:
            raise ValueError("max_per_creator and max_per_category must be >= 0 (0 = no cap)")
        if self.freshness_boost < 0 or self.freshness_half_life_days <= 0:
            raise ValueError("freshness_boost must be >= 0 and freshness_half_life_days > 0")
        object.__setattr__(self, "blocklist", frozenset(map(str, self.blocklist)))

    def to_json(self) -> str:
        """The rules as ``parse_rerank_config`` reads them (and push writes them)."""
        return json.dumps(dataclasses.asdict(self), default=sorted)


@dataclass
class Candidates:
    """One request's scored candidates, as parallel arrays (best first or not)."""

    item_ids: np.ndarray  # str
    scores: np.ndarray  # float, higher is better
    creator_ids: np.ndarray
    categories: np.ndarray
    age_days: np.ndarray
    embeddings: np.ndarray | None = None  # [n, d] item-tower embeddings, for MMR


@dataclass
class Reranked:
    positions: np.ndarray  # indices into the Candidates arrays, in page order
    scores: np.ndarray  # the boosted scores of the chosen items
    removed: dict  # rule -> number of candidates it removed
    # Every candidate the filters (1-3) left, best boosted score first, and the
    # boosted scores: what exploration may draw from.
    eligible: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    eligible_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))


def freshness_multiplier(age_days: np.ndarray, boost: float, half_life_days: float) -> np.ndarray:
    return 1.0 + boost * np.exp2(-np.maximum(age_days, 0.0) / half_life_days)


def first_occurrences(item_ids: np.ndarray) -> np.ndarray:
    """Boolean mask: True at the first position of each distinct id."""
    _, first = np.unique(item_ids, return_index=True)
    mask = np.zeros(len(item_ids), dtype=bool)
    mask[first] = True
    return mask


def rerank(
    candidates: Candidates,
    config: RerankConfig,
    watched: np.ndarray | list = (),
    excluded: np.ndarray | list = (),
) -> Reranked:
    """``watched``: what the user engaged with (removed when ``drop_watched``); ``excluded``:
    item ids the request asks not to see (the client's own filter)."""
    # Best score first, so "first occurrence" is the best-scored one and ties keep
    # the input order.
    order = np.argsort(-candidates.scores, kind="stable")
    item_ids = candidates.item_ids[order].astype(str)
    removed = {}
    for rule, drop in (
        ("blocklist", lambda ids: np.isin(ids, list(config.blocklist))),
        ("excluded", lambda ids: np.isin(ids, np.asarray(excluded, dtype=str))),
        ("duplicate", lambda ids: ~first_occurrences(ids)),
        (
            "watched",
            lambda ids: (
                np.isin(ids, np.asarray(watched, dtype=str))
                if config.drop_watched
                else np.zeros(len(ids), dtype=bool)
            ),
        ),
    ):
        dropped = drop(item_ids)
        removed[rule] = int(dropped.sum())
        order, item_ids = order[~dropped], item_ids[~dropped]
    scores = candidates.scores[order] * freshness_multiplier(
        candidates.age_days[order], config.freshness_boost, config.freshness_half_life_days
    )
    chosen, removed["capped"] = _select(scores, candidates, order, config)
    by_score = np.argsort(-scores, kind="stable")
    return Reranked(order[chosen], scores[chosen], removed, order[by_score], scores[by_score])


def _select(
    scores: np.ndarray, candidates: Candidates, order: np.ndarray, config: RerankConfig
) -> tuple[np.ndarray, int]:
    """Greedy MMR under caps over ``order``: the chosen offsets into ``order``, and
    how many unchosen candidates the caps rule out at the end."""
    n = len(order)
    span = scores.max(initial=0.0) - scores.min(initial=0.0)
    relevance = (scores - scores.min(initial=0.0)) / span if span > 0 else np.ones(n)
    use_mmr = config.mmr_lambda < 1.0 and candidates.embeddings is not None
    if use_mmr:
        vectors = candidates.embeddings[order].astype(np.float64)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        max_similarity = np.zeros(n)
    caps = [
        (
            np.unique(values[order], return_inverse=True)[1],
            limit,
            np.isin(values[order].astype(str), UNCAPPED),
        )
        for values, limit in (
            (candidates.creator_ids, config.max_per_creator),
            (candidates.categories, config.max_per_category),
        )
        if limit
    ]
    counts = [np.zeros(n, dtype=int) for _ in caps]
    available = np.ones(n, dtype=bool)

    def eligible():
        mask = available.copy()
        for (codes, limit, unknown), count in zip(caps, counts, strict=True):
            mask &= (count[codes] < limit) | unknown
        return mask

    chosen = []
    while len(chosen) < config.k and (allowed := eligible()).any():
        objective = relevance
        if use_mmr and chosen:
            objective = config.mmr_lambda * relevance - (1 - config.mmr_lambda) * max_similarity
        best = int(np.argmax(np.where(allowed, objective, -np.inf)))
        chosen.append(best)
        available[best] = False
        for (codes, _, _), count in zip(caps, counts, strict=True):
            count[codes[best]] += 1
        if use_mmr:
            max_similarity = np.maximum(max_similarity, vectors @ vectors[best])
    return np.asarray(chosen, dtype=int), int((available & ~eligible()).sum())


def parse_rerank_config(text: str | dict) -> RerankConfig:
    """A RerankConfig from its JSON (pipeline parameter ``rerank``), e.g.
    ``{"k": 10, "max_per_creator": 2, "mmr_lambda": 0.8, "blocklist": ["v1"]}``."""
    values = json.loads(text or "{}") if isinstance(text, str) else dict(text)
    allowed = [f.name for f in dataclasses.fields(RerankConfig)]
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"rerank: unknown option(s) {unknown}; allowed: {allowed}")
    if "blocklist" in values:
        values["blocklist"] = frozenset(values["blocklist"])
    return RerankConfig(**values)
