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
    EVENT_TS,
    ITEM_ID,
    ITEM_IDS,
    MODEL_OUTPUTS,
    RANKING,
    RETRIEVAL,
    SCORE,
    SCORES,
    SNAPSHOT_DIR,
    UNKNOWN,
)
from recsys.core.derived import context_columns
from recsys.core.features import HISTORY_COLUMNS
from recsys.core.requests import raw_arrays
from recsys.serving.backends import InProcessBackend
from recsys.serving.rerank import Candidates, RerankConfig, rerank
from recsys.serving.retrieval import ModelRetrieval
from recsys.serving.serving_log import ServingLog
from recsys.serving.serving_root import served_version
from recsys.serving.snapshot import FeatureSnapshot, pushed_rerank_config

# The watched rule removes what the user engaged with: the history's items.
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


@dataclass
class Recommendations:
    items: pd.DataFrame  # item_id, score, click_probability, ..., best first
    request_id: str
    version: int | None  # of the feature snapshot and re-ranking rules (= retrieval's)
    known_user: bool
    removed: dict  # candidates removed before the page: rule -> count
    milliseconds: dict = field(default_factory=dict)  # per step


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
    ):
        """``retrieval``: where candidates come from (``recsys.serving.retrieval``);
        default the retrieval model's own top-K behind ``backend``."""
        self.backend, self.features, self.config = backend, features, rerank_config
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
    ) -> Recommendations:
        """One request: the user's features (``user_row`` when an online store gave
        them, else the snapshot's) plus the context; ``exclude``: item ids not to show.
        ``log``: write it to the serving log (if there is one; not for warmups)."""
        clock = {}
        if user_row is not None:
            user, known = user_row, True
        else:
            user, known = self.features.user(str(user_id))
        query = {**user, **(context or Context()).columns()}
        ((page, removed, served_rows),) = self.pages(query, k, clock, exclude)
        request_id = uuid.uuid4().hex
        if self.serving_log is not None and log:
            started = time.perf_counter()
            self.serving_log.append(
                request_id,
                query,
                {name: self.features.items[name][served_rows] for name in self.item_inputs},
            )
            clock["log"] = (time.perf_counter() - started) * 1000
        return Recommendations(page, request_id, self.version, known, removed, clock)

    def pages(
        self, queries: dict, k: int | None = None, clock: dict | None = None, exclude=()
    ) -> list[tuple[pd.DataFrame, dict, np.ndarray]]:
        """Pages for many queries at once (raw query columns, one row per query):
        one (page, removed-counts, snapshot rows of the page's items) per query.
        ``clock`` collects milliseconds per step; ``exclude``: item ids no page shows."""
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
        retrieval_scores = retrieved[SCORES].ravel()
        rows = self.features.item_rows(item_ids)
        in_snapshot = rows >= 0
        query_of = np.repeat(np.arange(n_queries), n_retrieved)[in_snapshot]
        item_ids, rows, retrieval_scores = (
            item_ids[in_snapshot],
            rows[in_snapshot],
            retrieval_scores[in_snapshot],
        )
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

        config = replace(self.config, k=k) if k else self.config
        registry, attribute = self.features.registry, self.features.item_attribute
        # A role no feature plays switches its rules off: unknown creators and
        # categories are never capped, and an infinite age gets no freshness boost.
        creators, categories, ages = (
            attribute(role, rows, absent)
            for role, absent in (("creator", UNKNOWN), ("category", UNKNOWN), ("item_age", np.inf))
        )
        embeddings = self.features.embeddings
        histories = queries.get(HISTORY_ITEMS)
        bounds = np.searchsorted(query_of, np.arange(n_queries + 1))
        missing = np.bincount(
            np.repeat(np.arange(n_queries), n_retrieved)[~in_snapshot], minlength=n_queries
        )
        results = []
        for query in range(n_queries):
            mine = slice(bounds[query], bounds[query + 1])
            page = rerank(
                Candidates(
                    item_ids[mine],
                    np.asarray(ranked[SCORE][mine], dtype=np.float64),
                    creators[mine],
                    categories[mine],
                    ages[mine],
                    embeddings[rows[mine]] if embeddings is not None else None,
                ),
                config,
                watched=list(histories[query]) if histories is not None else [],
                excluded=exclude,
            )
            chosen = page.positions + bounds[query]
            frame = pd.DataFrame(
                {
                    ITEM_ID: item_ids[chosen],
                    "score": page.scores,
                    **{name: ranked[name][chosen] for name in self._ranking_outputs},
                    "retrieval_score": retrieval_scores[chosen],
                    **{
                        registry.role(role): values[chosen]
                        for role, values in (("category", categories), ("creator", creators))
                        if registry.role(role)
                    },
                }
            )
            results.append(
                (frame, {"not_in_snapshot": int(missing[query]), **page.removed}, rows[chosen])
            )
        lap("rerank")
        return results

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
