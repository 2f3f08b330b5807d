"""Online recommendations: retrieval top-N, then ranking, then re-ranking to K.

``Funnel.recommend(user_id, context)`` runs the three steps on one request with
the models behind a backend (``recsys.serving.backends``: in process, TF Serving
gRPC or REST) and the features of the snapshot pushed with them
(``recsys.serving.snapshot``). Requests are built by ``recsys.core.requests``,
the encoding evaluation and push's warmup records use too; the request context
comes from ``recsys.core.derived``, as the training examples' does. With a
``ServingLog``, every served item's features are logged for the skew check.
"""

import time
import uuid
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from recsys.core import storage
from recsys.core.contracts import (
    ARM,
    CANDIDATE_SOURCES,
    EVENT_TS,
    ITEM_ID,
    ITEM_IDS,
    MODEL_OUTPUTS,
    POSITION,
    PROPENSITY,
    RANKING,
    REQUEST_ID,
    RETRIEVAL,
    SCORE,
    SCORES,
    SNAPSHOT_DIR,
    TWO_TOWER,
    UNKNOWN,
    USER_ID,
    WATCHED_ITEMS,
)
from recsys.core.derived import context_columns
from recsys.core.features import HISTORY_COLUMNS
from recsys.core.requests import raw_arrays
from recsys.serving.backends import InProcessBackend
from recsys.serving.candidates import RankedLists, engaged_keys, fuse
from recsys.serving.experiment import Arm
from recsys.serving.exploration import ExplorationConfig, explore
from recsys.serving.rerank import Candidates, RerankConfig, rerank
from recsys.serving.retrieval import ModelRetrieval
from recsys.serving.serving_log import ServingLog
from recsys.serving.serving_root import served_version
from recsys.serving.snapshot import FeatureSnapshot, pushed_rerank_config

# The watched rule removes what the user engaged with: the history's items and the
# user snapshot's watched items (the join's horizon, longer than the history).
HISTORY_ITEMS = HISTORY_COLUMNS[0]


@dataclass
class Context:
    """What the request knows besides the user: its time (default: now)."""

    at: pd.Timestamp | None = None

    def columns(self) -> dict[str, np.ndarray]:
        at = self.at if self.at is not None else pd.Timestamp.now(tz="UTC")
        event_ts = np.array([int(at.timestamp())])
        return {**context_columns(event_ts), EVENT_TS: event_ts}


def _text(values: np.ndarray) -> np.ndarray:
    """String tensors come back as bytes (in process, gRPC) or str (REST)."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def watched_by(query: int, *columns) -> list:
    """What query ``query``'s user engaged with: its lists in the columns given (None
    for a column the queries lack)."""
    return [item for column in columns if column is not None for item in column[query]]


@dataclass
class Recommendations:
    items: pd.DataFrame  # item_id, score, click_probability, ..., best first
    request_id: str
    version: int | None  # of the feature snapshot and re-ranking rules (= retrieval's)
    known_user: bool
    removed: dict  # candidates removed before the page: rule -> count
    milliseconds: dict = field(default_factory=dict)  # per step
    arm: str | None = None  # the experiment arm that served it


@dataclass
class ScoredCandidates:
    """Many queries' retrieved candidates, ranked, as flat arrays grouped by query (in
    query order): ``query_of`` says whose each candidate is."""

    n_queries: int
    query_of: np.ndarray
    item_ids: np.ndarray
    rows: np.ndarray  # snapshot rows of the items
    attributes: dict[str, np.ndarray]  # the items' creator, category and age
    # The two-tower's scores, or with several sources their fused score (the
    # retrieval order either way).
    retrieval_scores: np.ndarray
    ranked: dict[str, np.ndarray]  # the ranker's outputs (contracts.MODEL_OUTPUTS)
    missing: np.ndarray  # per query: retrieved items the snapshot does not have
    queries: dict[str, np.ndarray]  # the raw query columns
    # Per query: the retrieval model's candidates left out as already engaged with,
    # before the lists were merged (the watched rule, applied early); None where it
    # was not (the re-ranking applies it).
    watched_before: np.ndarray | None
    # Which source found each candidate (index into contracts.CANDIDATE_SOURCES).
    sources: np.ndarray


# Rows per model call when many queries are scored at once (offline evaluation).
PREDICT_BATCH_ROWS = 8192


class Funnel:
    def __init__(
        self,
        backend,
        features: FeatureSnapshot,
        rerank_config: RerankConfig = RerankConfig(),
        serving_log: "ServingLog | None" = None,
        version: int | None = None,
        retrieval=None,
        exploration: ExplorationConfig = ExplorationConfig(),
        rng: np.random.Generator | None = None,
        exposure_log: "ServingLog | None" = None,
    ):
        """``retrieval``: where candidates come from (``recsys.serving.retrieval``);
        default the retrieval model's own top-K behind ``backend``. ``exploration``:
        the share of requests whose last slot explores (``recsys.serving.exploration``);
        ``rng`` draws it. ``exposure_log``: what each request showed, with each item's
        position, propensity and the request's arm (what ``recsys experiment report``
        and off-policy evaluation read)."""
        self.backend, self.features, self.config = backend, features, rerank_config
        # Candidates carry the catalog's own id strings, not one decoded per model
        # output: the pages of many users then share them.
        self.catalog = features.item_index.to_numpy()
        self.exploration, self.rng = exploration, rng or np.random.default_rng()
        self.exposure_log = exposure_log
        self.serving_log, self.version = serving_log, version
        self.retrieval = retrieval or ModelRetrieval(backend)
        self.retrieval_signature = self.retrieval.signature
        self.ranking_signature = backend.signature(RANKING)
        # The ranker's inputs the request brings (the user and the context); the
        # others are each candidate item's, from the snapshot.
        registry = features.registry
        request = set(registry.side("user")) | {f.name for f in registry.select(group="context")}
        self.user_inputs = [name for name in self.ranking_signature if name in request]
        self.item_inputs = [name for name in self.ranking_signature if name not in request]

    @classmethod
    def from_serving_root(
        cls, serving_root: str, backend=None, rerank_config: RerankConfig | None = None, **kwargs
    ) -> "Funnel":
        """The served models (in this process unless another backend is given), with the
        feature snapshot and re-ranking rules pushed with the served retrieval version
        (the rules the evaluation measured, unless ``rerank_config`` is given)."""
        backend = backend or InProcessBackend.from_serving_root(serving_root)
        version = served_version(serving_root, RETRIEVAL)
        snapshot = storage.join(serving_root, SNAPSHOT_DIR, str(version))
        if rerank_config is None:
            rerank_config = pushed_rerank_config(snapshot)
        return cls(
            backend, FeatureSnapshot.load(snapshot), rerank_config, version=version, **kwargs
        )

    def recommend(
        self,
        user_id: str,
        context: Context | None = None,
        k: int | None = None,
        exclude=(),
        user_row: dict | None = None,
        log: bool = True,
        arm: "Arm | None" = None,
    ) -> Recommendations:
        """One request: the user's features (``user_row`` when an online store gave
        them, else the snapshot's) plus the context; ``exclude``: item ids not to show.
        ``log``: write it to the serving and exposure logs (if any; not for warmups).
        ``arm``: the experiment arm whose settings serve it (``recsys.serving.experiment``)."""
        clock = {}
        if user_row is not None:
            user, known = user_row, True
        else:
            user, known = self.features.user(str(user_id))
        query = {**user, **(context or Context()).columns()}
        ((page, removed, served_rows),) = self.pages(query, k, clock, exclude, arm)
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        if self.serving_log is not None and log:
            self.serving_log.append(
                request_id,
                # The model inputs (the skew check's), not the watched items' long list.
                {name: values for name, values in query.items() if name != WATCHED_ITEMS},
                {name: self.features.items[name][served_rows] for name in self.item_inputs},
            )
        if self.exposure_log is not None and log:
            self.exposure_log.append(
                request_id,
                {
                    EVENT_TS: query[EVENT_TS],
                    REQUEST_ID: np.array([request_id]),
                    USER_ID: np.array([str(user_id)]),
                    ARM: np.array([arm.name if arm else ""]),
                },
                {
                    ITEM_ID: page[ITEM_ID].to_numpy(),
                    POSITION: np.arange(len(page)),
                    PROPENSITY: page[PROPENSITY].to_numpy(),
                    "version": np.full(len(page), -1 if self.version is None else self.version),
                },
            )
        if log and (self.serving_log is not None or self.exposure_log is not None):
            clock["log"] = (time.perf_counter() - started) * 1000
        return Recommendations(
            page, request_id, self.version, known, removed, clock, arm.name if arm else None
        )

    def candidates(self, queries: dict, clock: dict | None = None) -> "ScoredCandidates":
        """Retrieval and ranking for many queries at once (raw query columns, one row
        per query): every retrieved candidate the snapshot has, with the ranker's
        outputs. ``clock`` collects milliseconds per step."""
        if isinstance(queries, pd.DataFrame):
            queries = {name: queries[name].to_numpy() for name in queries.columns}
        started = time.perf_counter()

        def lap(step):
            nonlocal started
            if clock is not None:
                clock[step] = (time.perf_counter() - started) * 1000
            started = time.perf_counter()

        retrieved = self._predict(
            self.retrieval.retrieve, RETRIEVAL, raw_arrays(queries, self.retrieval_signature)
        )
        n_queries, n_retrieved = retrieved[ITEM_IDS].shape
        item_ids = _text(retrieved[ITEM_IDS].ravel())
        rows = self.features.item_rows(item_ids).reshape(n_queries, n_retrieved)
        missing = (rows < 0).sum(axis=1)
        left_out = None  # the two-tower's alone: the re-ranking's watched rule applies
        if self.features.sources is None:  # the two-tower's candidates alone
            in_snapshot = rows.ravel() >= 0
            query_of = np.repeat(np.arange(n_queries), n_retrieved)[in_snapshot]
            retrieval_scores = retrieved[SCORES].ravel()[in_snapshot]
            rows = rows.ravel()[in_snapshot]
            # Whose they are: a retrieval may say (evaluation's popularity baseline).
            source = getattr(self.retrieval, "source", TWO_TOWER)
            sources = np.full(len(rows), CANDIDATE_SOURCES.index(source), dtype=np.int8)
        else:  # merged with the other sources' (recsys.serving.candidates)
            # What the user engaged with is left out before the lists are cut, so a
            # heavy user's candidates are not mostly what the watched rule drops.
            engaged = engaged_keys(
                [
                    watched_by(query, queries.get(HISTORY_ITEMS), queries.get(WATCHED_ITEMS))
                    for query in range(n_queries)
                ],
                self.features.item_index,
            )
            lists = self.features.sources.lists(queries.get(HISTORY_ITEMS), n_queries, engaged)
            retrieved_lists = RankedLists.of_matrix(rows)
            two_tower = retrieved_lists.without(engaged, len(self.catalog))
            # The watched rule's count: the retrieval model's candidates left out here.
            left_out = np.bincount(retrieved_lists.query_of, minlength=n_queries) - np.bincount(
                two_tower.query_of, minlength=n_queries
            )
            merged = fuse(
                {TWO_TOWER: two_tower, **lists},
                n_queries,
                len(self.catalog),
                self.features.sources.fusion_weights,
            ).head(self.features.sources.per_source)
            query_of, rows, retrieval_scores, sources = (
                merged.query_of,
                merged.rows,
                merged.fused_score,
                merged.source,
            )
        attributes = self._attributes(rows)
        lap("retrieval")

        inputs = raw_arrays(
            {name: self.features.items[name][rows] for name in self.item_inputs},
            {name: self.ranking_signature[name] for name in self.item_inputs},
        )
        user_arrays = raw_arrays(
            queries, {name: self.ranking_signature[name] for name in self.user_inputs}
        )
        inputs.update({name: values[query_of] for name, values in user_arrays.items()})
        ranked = self._predict(
            lambda arrays: self.backend.predict(RANKING, arrays), RANKING, inputs
        )
        lap("ranking")
        return ScoredCandidates(
            n_queries,
            query_of,
            self.catalog[rows],
            rows,
            attributes,
            retrieval_scores,
            ranked,
            missing,
            queries,
            left_out,
            sources,
        )

    def pages(
        self,
        queries: dict,
        k: int | None = None,
        clock: dict | None = None,
        exclude=(),
        arm: "Arm | None" = None,
    ) -> list[tuple[pd.DataFrame, dict, np.ndarray]]:
        """Pages for many queries at once (raw query columns, one row per query):
        one (page, removed-counts, snapshot rows of the page's items) per query.
        ``clock`` collects milliseconds per step; ``exclude``: item ids no page shows;
        ``arm``: an experiment arm's order, rules and exploration instead of the
        funnel's."""
        return self.arrange(self.candidates(queries, clock), k, clock, exclude, arm)

    def arrange(
        self,
        scored: ScoredCandidates,
        k: int | None = None,
        clock: dict | None = None,
        exclude=(),
        arm: "Arm | None" = None,
    ) -> list[tuple[pd.DataFrame, dict, np.ndarray]]:
        """The re-ranking step of ``pages`` over candidates already scored (by
        ``candidates``): several arms or rules can arrange one scoring."""
        started = time.perf_counter()
        registry = self.features.registry
        attributes = scored.attributes
        results = []
        for chosen, final_scores, propensity, removed in self.choose(scored, k, exclude, arm):
            frame = pd.DataFrame(
                {
                    ITEM_ID: scored.item_ids[chosen],
                    "score": final_scores,
                    **{name: scored.ranked[name][chosen] for name in self._ranking_outputs},
                    "retrieval_score": scored.retrieval_scores[chosen],
                    "source": np.asarray(CANDIDATE_SOURCES, dtype=object)[scored.sources[chosen]],
                    PROPENSITY: propensity,
                    **{
                        registry.role(role): attributes[role][chosen]
                        for role in ("category", "creator")
                        if registry.role(role)
                    },
                }
            )
            results.append((frame, removed, scored.rows[chosen]))
        if clock is not None:
            clock["rerank"] = (time.perf_counter() - started) * 1000
        return results

    def choose(
        self,
        scored: ScoredCandidates,
        k: int | None = None,
        exclude=(),
        arm: "Arm | None" = None,
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, dict]]:
        """Per query, what ``arrange`` puts on its page, as arrays: (the shown
        candidates' offsets into ``scored``, their final scores, their propensities,
        removed counts per rule). Evaluation reads pages for many users this way
        without building a frame per page."""
        config = arm.rules(self.config) if arm else self.config
        config = replace(config, k=k) if k else config
        exploration = arm.exploration if arm else self.exploration
        # What orders the candidates: the ranker's score, or retrieval's for an arm
        # that measures the funnel without its ranking stage.
        order_scores = (
            scored.retrieval_scores if arm and arm.order == "retrieval" else scored.ranked[SCORE]
        )
        attributes = scored.attributes
        embeddings = self.features.embeddings
        histories = scored.queries.get(HISTORY_ITEMS)
        watched_items = scored.queries.get(WATCHED_ITEMS)
        # Not again, per request, over up to watched_max_items ids, where the
        # candidates already left the engaged items out.
        applied = scored.watched_before is not None
        bounds = np.searchsorted(scored.query_of, np.arange(scored.n_queries + 1))
        chosen = []
        for query in range(scored.n_queries):
            mine = slice(bounds[query], bounds[query + 1])
            page = rerank(
                Candidates(
                    scored.item_ids[mine],
                    np.asarray(order_scores[mine], dtype=np.float64),
                    attributes["creator"][mine],
                    attributes["category"][mine],
                    attributes["item_age"][mine],
                    embeddings[scored.rows[mine]] if embeddings is not None else None,
                ),
                config,
                watched=[] if applied else watched_by(query, histories, watched_items),
                excluded=exclude,
            )
            shown, propensity = explore(
                page.positions, page.eligible, page.eligible_scores, exploration, self.rng
            )
            final_scores = np.zeros(bounds[query + 1] - bounds[query])
            final_scores[page.eligible] = page.eligible_scores
            chosen.append(
                (
                    shown + bounds[query],
                    final_scores[shown],
                    propensity,
                    {
                        "not_in_snapshot": int(scored.missing[query]),
                        **page.removed,
                        "watched": page.removed["watched"]
                        + (int(scored.watched_before[query]) if applied else 0),
                    },
                )
            )
        return chosen

    def _attributes(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """The candidates' creator, category and age (the rules' inputs). A role no
        feature plays switches its rules off: unknown creators and categories are
        never capped, and an infinite age gets no freshness boost."""
        return {
            role: self.features.item_attribute(role, rows, absent)
            for role, absent in (("creator", UNKNOWN), ("category", UNKNOWN), ("item_age", np.inf))
        }

    def _predict(self, predict, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``predict(inputs)`` of ``model`` in slices of PREDICT_BATCH_ROWS rows,
        concatenated."""
        n = len(next(iter(inputs.values())))
        if n <= PREDICT_BATCH_ROWS:
            return predict(inputs) if n else self._empty(model)
        items = inputs.items()
        parts = [
            predict({name: values[start : start + PREDICT_BATCH_ROWS] for name, values in items})
            for start in range(0, n, PREDICT_BATCH_ROWS)
        ]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    # The ranking outputs shown on a page besides the (re-ranked) score.
    _ranking_outputs = [name for name in MODEL_OUTPUTS[RANKING] if name != SCORE]

    @staticmethod
    def _empty(model: str) -> dict[str, np.ndarray]:
        return {name: np.zeros((0,)) for name in MODEL_OUTPUTS[model]}
