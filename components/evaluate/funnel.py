"""What each stage of the funnel adds: pages of five policies for every eval user.

- ``popularity``: the most clicked training items;
- ``retrieval_order``: retrieval's top candidates in its own order;
- ``ranker_order``: the same candidates in the ranker's order;
- ``click_order``: the same candidates by the ranker's click probability alone;
- ``funnel``: the ranker's order re-ranked by the product's rules, which is what
  ``recsys.serving.funnel`` serves (retrieval top-N, ranking, re-ranking to k);
- with a ground truth, ``oracle_order``: the same candidates in the order of their
  true value at the user's first request, the ceiling the others are read against.

Every page drops the user's history and has up to k items; each is built for the
user's first eval request, with items' features from the start of the eval split,
so no eval-window statistic reaches the ranker.

Each policy is measured three ways, which can disagree:

- against the eval window's logged clicks (Recall@k, NDCG@10 over the users with
  new clicks): the logging policy chose what could be clicked, so this rewards
  policies that resemble it;
- off policy (``offpolicy``: IPS, SNIPS, DR), when the impressions carry the
  logging policy's propensities: expected clicks and watch seconds per request;
- in truth (``recsys.core.ground_truth``), when the data is synthetic and the
  world that generated it is under the data root: the same quantities, exactly.
"""

import copy
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recsys.components.evaluate import offpolicy
from recsys.components.evaluate.data import EvalData
from recsys.components.evaluate.metrics import PageQuality, page_quality
from recsys.components.evaluate.models import serving_fn
from recsys.components.evaluate.retrieval import RetrievalTask
from recsys.core.contracts import (
    CANDIDATE_SOURCES,
    CLICK_PROBABILITY,
    CLICKED,
    EVENT_TS,
    EXPECTED_WATCH_SECONDS,
    ITEM_ID,
    ITEM_IDS,
    POPULAR,
    PROPENSITY,
    RANKING,
    RETRIEVAL,
    SCORE,
    SCORES,
    USER_ID,
    WATCH_SECONDS,
    WATCHED_ITEMS,
)
from recsys.core.features import HISTORY_COLUMNS, FeatureRegistry
from recsys.core.tables import read_dataset
from recsys.serving.backends import InProcessBackend
from recsys.serving.candidates import RankedLists, engaged_keys
from recsys.serving.funnel import Funnel, ScoredCandidates, watched_by
from recsys.serving.rerank import RerankConfig
from recsys.serving.retrieval import ModelRetrieval
from recsys.serving.snapshot import FeatureSnapshot

# The page policies compared, in funnel order, and what each is.
VARIANTS = {
    "popularity": "the most clicked training items",
    "retrieval_order": "retrieval's candidates in retrieval's order",
    "ranker_order": "the same candidates in the ranker's order",
    "click_order": "the same candidates by the ranker's click probability alone",
    "funnel": "ranking and re-ranking (the shipped rules): what is served",
}
# With a ground truth (synthetic data), the ceiling every variant is read against.
ORACLE = "oracle_order"
ORACLE_VARIANT = {ORACLE: "the same candidates in the truth's best order (by true value)"}
# What a page row carries: its user, item, the ranker's predictions for it and the
# candidate source that found it.
SOURCE = "source"
PAGE_COLUMNS = [USER_ID, ITEM_ID, CLICK_PROBABILITY, EXPECTED_WATCH_SECONDS, SOURCE]
LOGGED_COLUMNS = [USER_ID, ITEM_ID, EVENT_TS, CLICKED, WATCH_SECONDS]
# Eval users whose candidates are scored together (retrieval top-N each, then ranked).
FUNNEL_USERS_PER_CHUNK = 2_000


@dataclass
class VariantEvaluation:
    pages: PageQuality  # against the logged clicks
    # Per candidate source: its share of the shown items, and of the shown items that
    # were clicked in the eval window (positives).
    source_share: dict[str, float] = field(default_factory=dict)
    source_hit_share: dict[str, float] = field(default_factory=dict)
    estimates: dict | None = None  # reward -> estimator -> offpolicy.Estimate
    true_value: dict | None = None  # reward -> value per request


@dataclass
class FunnelEvaluation:
    k: int
    candidates_per_user: int
    variants: dict[str, VariantEvaluation]
    # The two-tower score's AUC on the eval impressions (the ranker's task).
    retrieval_score_impression_auc: float
    logged_requests: int = 0  # the eval requests the estimates and truth average over
    off_policy_note: str = ""  # why there are no off-policy estimates, when there are none
    pages: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    # The serving version's funnel on the same requests (compare_estimated_value).
    champion: VariantEvaluation | None = None

    @property
    def funnel(self) -> PageQuality:
        return self.variants["funnel"].pages

    @property
    def retrieval_order(self) -> PageQuality:
        return self.variants["retrieval_order"].pages

    def metrics(self) -> dict[str, float]:
        """Flat, as logged: <variant>_<page metric>, <variant>_true_<reward>,
        <variant>_<estimator>_<reward> and its _margin (95% half-width)."""
        metrics = {
            "funnel_k": self.k,
            "candidates_per_user": self.candidates_per_user,
            "logged_requests": self.logged_requests,
        }
        variants = dict(self.variants)
        if self.champion is not None:
            variants["champion_funnel"] = self.champion
        for name, variant in variants.items():
            metrics.update({f"{name}_{m}": value for m, value in variant.pages.metrics().items()})
            for source, share in variant.source_share.items():
                metrics[f"{name}_share_from_{source}"] = share
                metrics[f"{name}_hit_share_from_{source}"] = variant.source_hit_share[source]
            for reward, value in (variant.true_value or {}).items():
                metrics[f"{name}_true_{reward}"] = value
            for reward, by_estimator in (variant.estimates or {}).items():
                for estimator, estimate in by_estimator.items():
                    metrics[f"{name}_{estimator}_{reward}"] = estimate.value
                    metrics[f"{name}_{estimator}_{reward}_margin"] = estimate.margin
        metrics["retrieval_score_impression_auc"] = self.retrieval_score_impression_auc
        oracle = self.variants.get(ORACLE)
        if oracle is not None and oracle.true_value and oracle.true_value["value"] > 0:
            metrics["funnel_true_value_share_of_oracle"] = (
                self.variants["funnel"].true_value["value"] / oracle.true_value["value"]
            )
        return metrics


class PopularityRetrieval:
    """A funnel's retrieval that returns each query the ``k`` most clicked training
    items it has not engaged with (``leave_out``), scored by their click counts: a
    full page for any user the catalog allows, however much they watched, with no
    more candidates to rank than a page holds."""

    source = POPULAR

    def __init__(self, signature, counts: pd.Series, k: int):
        top = counts.sort_values(ascending=False, kind="stable")
        self.signature = signature
        self.item_ids = top.index.to_numpy(dtype=object)
        self.scores = top.to_numpy(dtype=np.float32)
        self.position = pd.Index(self.item_ids)
        self.k = k
        self.engaged: list = []

    def leave_out(self, engaged: list) -> None:
        """Per query of the next ``retrieve`` call, the item ids it must not return."""
        self.engaged = engaged

    def retrieve(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values())))
        engaged = self.engaged if len(self.engaged) == n else [[]] * n
        # Past the k + (the most any query leaves out) most clicked, no query looks.
        width = min(self.k + max(map(len, engaged), default=0), len(self.item_ids))
        lists = (
            RankedLists.of_matrix(np.tile(np.arange(width), (n, 1)))
            .without(engaged_keys(engaged, self.position), len(self.position))
            .head(self.k)
        )
        # Back to a queries x k matrix in popularity order; "" (no item) pads.
        item_ids = np.full((n, self.k), "", dtype=object)
        scores = np.zeros((n, self.k), dtype=np.float32)
        item_ids[lists.query_of, lists.rank] = self.item_ids[lists.rows]
        scores[lists.query_of, lists.rank] = self.scores[lists.rows]
        return {ITEM_IDS: item_ids, SCORES: scores}


def ordered_pages(scored: ScoredCandidates, users: np.ndarray, key: np.ndarray, k: int):
    """Each query's candidates without the user's history, highest ``key`` (one per
    candidate) first, cut to ``k``; long format (PAGE_COLUMNS)."""
    candidates = pd.DataFrame(
        {
            "query": scored.query_of,
            ITEM_ID: scored.item_ids,
            "key": key,
            CLICK_PROBABILITY: scored.ranked[CLICK_PROBABILITY],
            EXPECTED_WATCH_SECONDS: scored.ranked[EXPECTED_WATCH_SECONDS],
            SOURCE: scored.sources,
        }
    )
    engaged = [scored.queries.get(name) for name in (HISTORY_COLUMNS[0], WATCHED_ITEMS)]
    history = (
        pd.concat([pd.Series(list(column)) for column in engaged if column is not None])
        .explode()
        .dropna()
    )
    watched = pd.DataFrame({"query": history.index, ITEM_ID: history.to_numpy(dtype=object)})
    candidates = candidates.merge(watched.assign(watched=True), on=["query", ITEM_ID], how="left")
    candidates = candidates[candidates["watched"].isna()]
    candidates = candidates.sort_values(["query", "key"], ascending=[True, False], kind="stable")
    page = candidates.groupby("query", sort=False).head(k)
    return page.assign(**{USER_ID: users[page["query"].to_numpy()]})[PAGE_COLUMNS]


def served_pages(funnel: Funnel, scored: ScoredCandidates, users: np.ndarray) -> pd.DataFrame:
    """The funnel's pages (its re-ranking of the scored candidates), long format:
    the shown candidates of every query gathered at once, no frame per page."""
    chosen = [shown for shown, _, _, _ in funnel.choose(scored)]
    shown = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return pd.DataFrame(
        {
            USER_ID: users[scored.query_of[shown]],
            ITEM_ID: scored.item_ids[shown],
            CLICK_PROBABILITY: scored.ranked[CLICK_PROBABILITY][shown],
            EXPECTED_WATCH_SECONDS: scored.ranked[EXPECTED_WATCH_SECONDS][shown],
            SOURCE: scored.sources[shown],
        }
    )[PAGE_COLUMNS]


def watched_in_training(train_clicks: pd.DataFrame, users: np.ndarray) -> np.ndarray:
    """Per user of ``users`` (in order), the items they clicked in training (a list)."""
    mine = train_clicks[train_clicks[USER_ID].isin(users)]
    lists = mine.groupby(USER_ID, sort=False)[ITEM_ID].agg(list).reindex(users)
    column = np.empty(len(users), dtype=object)
    # One by one: numpy would read equally long lists as a second dimension.
    for position, items in enumerate(lists.to_list()):
        column[position] = items if isinstance(items, list) else []
    return column


def source_shares(page: pd.DataFrame, positives: pd.DataFrame) -> tuple[dict, dict]:
    """Per candidate source, its share of the page items and of the page items that
    are eval positives (both 0 for a source that found none)."""
    hit = page.merge(positives.assign(_hit=True), on=[USER_ID, ITEM_ID], how="left")["_hit"]
    hit = hit.fillna(False).to_numpy(dtype=bool)
    sources = page[SOURCE].to_numpy()
    n = len(CANDIDATE_SOURCES)
    shown = np.bincount(sources, minlength=n)
    hits = np.bincount(sources[hit], minlength=n)
    return (
        {name: float(shown[i] / max(shown.sum(), 1)) for i, name in enumerate(CANDIDATE_SOURCES)},
        {name: float(hits[i] / max(hits.sum(), 1)) for i, name in enumerate(CANDIDATE_SOURCES)},
    )


def logged_requests(eval_events: pd.DataFrame | None) -> tuple[pd.DataFrame | None, str]:
    """The eval impressions off-policy estimates average over, or why there are none."""
    if eval_events is None or PROPENSITY not in eval_events:
        return None, "the impressions carry no propensity column"
    missing = int(eval_events[PROPENSITY].isna().sum())
    if missing:
        return None, f"{missing} of {len(eval_events)} eval impressions have no propensity"
    columns = [*LOGGED_COLUMNS, PROPENSITY]
    return eval_events if list(eval_events.columns) == columns else eval_events[columns], ""


def evaluate_funnel(
    retrieval_model_dir: str,
    ranking_model_dir: str,
    item_embeddings_dir: str,
    candidate_sources_dir: str,
    eval_items: pd.DataFrame,
    data: EvalData,
    task: RetrievalTask,
    config: RerankConfig,
    registry: FeatureRegistry,
    retrieval_score_auc: float,
    eval_events: pd.DataFrame | None = None,
    oracle=None,
    watch_weight: float = 1.0,
) -> FunnelEvaluation:
    """Pages of each of VARIANTS (``config.k`` items) for every eval user, measured
    against the logged clicks, off policy when ``eval_events`` carry propensities,
    and in truth when an ``oracle`` (``recsys.core.ground_truth.Oracle``) is given,
    in clicks, watch seconds and value (clicks + ``watch_weight`` * watched minutes,
    what the ranker's score estimates). ``eval_items``: the item snapshot as of the
    start of the eval split; ``candidate_sources_dir``: the sources merged with the
    two-tower's (``recsys.serving.candidates``; empty: none)."""
    features = FeatureSnapshot(
        None, eval_items, read_dataset(item_embeddings_dir), registry, candidate_sources_dir
    )
    backend = InProcessBackend.of_signatures(
        {RETRIEVAL: serving_fn(retrieval_model_dir), RANKING: serving_fn(ranking_model_dir)}
    )
    users = data.users
    funnel = Funnel(backend, features, config)
    two_tower_only = copy.copy(features)
    two_tower_only.sources = None
    popularity = PopularityRetrieval(
        ModelRetrieval(backend).signature, task.train_clicks[ITEM_ID].value_counts(), config.k
    )
    popular = Funnel(backend, two_tower_only, config, retrieval=popularity)
    # Users a chunk at a time: their candidates (retrieval top-N each, ranked) are
    # scored together, and only the pages are kept.
    variants = {**VARIANTS, **(ORACLE_VARIANT if oracle is not None else {})}
    value = next(reward for reward in offpolicy.rewards(watch_weight) if reward.name == "value")
    pages = {name: [] for name in variants}
    candidates = 0
    for start in range(0, len(users), FUNNEL_USERS_PER_CHUNK):
        chunk = users[start : start + FUNNEL_USERS_PER_CHUNK]
        queries = data.first_of(chunk)
        # What the watched rule keeps out, as serving's snapshot would: every item the
        # user clicked in training (the eval positives exclude them too).
        queries[WATCHED_ITEMS] = watched_in_training(task.train_clicks, chunk)
        scored = funnel.candidates(queries)
        candidates += len(scored.query_of) + int(scored.missing.sum())
        engaged = [queries[column].to_numpy() for column in (HISTORY_COLUMNS[0], WATCHED_ITEMS)]
        popularity.leave_out([watched_by(query, *engaged) for query in range(len(chunk))])
        chunk_pages = {
            "popularity": ordered_pages(
                (by_popularity := popular.candidates(queries)),
                chunk,
                by_popularity.retrieval_scores,
                config.k,
            ),
            "retrieval_order": ordered_pages(scored, chunk, scored.retrieval_scores, config.k),
            "ranker_order": ordered_pages(scored, chunk, scored.ranked[SCORE], config.k),
            "click_order": ordered_pages(scored, chunk, scored.ranked[CLICK_PROBABILITY], config.k),
            "funnel": served_pages(funnel, scored, chunk),
        }
        if oracle is not None:  # each candidate's true value at the user's first request
            truth = oracle.engagement(
                chunk[scored.query_of],
                scored.item_ids,
                queries[EVENT_TS].to_numpy()[scored.query_of],
            )
            chunk_pages[ORACLE] = ordered_pages(scored, chunk, value.true(truth), config.k)
        for name, page in chunk_pages.items():
            pages[name].append(page)
    pages = {name: pd.concat(parts, ignore_index=True) for name, parts in pages.items()}
    if eval_events is not None:
        # Copied only when some user has no page: at x100 a copy is 150 MB.
        of_users = eval_events[USER_ID].isin(users).to_numpy()
        if not of_users.all():
            eval_events = eval_events[of_users].reset_index(drop=True)
    logged, note = logged_requests(eval_events)
    valued_in = offpolicy.rewards(watch_weight)
    variants = {}
    for name, page in pages.items():
        variants[name] = VariantEvaluation(
            page_quality(
                page,
                task.users,
                task.positives,
                funnel.catalog,
                features.embeddings,
                config.k,
            ),
            *source_shares(page, task.positives),
            estimates=offpolicy.estimate(page, logged, valued_in) if logged is not None else None,
            true_value=offpolicy.true_value(page, eval_events, oracle, valued_in)
            if oracle is not None and eval_events is not None
            else None,
        )
    return FunnelEvaluation(
        config.k,
        int(candidates / max(len(users), 1)),
        variants,
        retrieval_score_auc,
        int(offpolicy.first_of_request(eval_events).sum()) if eval_events is not None else 0,
        note,
        pages,
    )
