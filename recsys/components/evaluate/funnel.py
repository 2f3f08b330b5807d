"""The whole funnel as served (``recsys.serving.funnel``: retrieval top-N, ranking,
re-ranking to k) for each eval user's first request, against the retrieval order
of the same candidates. Items carry their features from the start of the eval
split, so no eval-window statistic reaches the ranker."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.components.evaluate.metrics import PageQuality, page_quality
from recsys.components.evaluate.models import call_in_batches, serving_fn
from recsys.components.evaluate.retrieval import RetrievalTask
from recsys.core.contracts import ITEM_ID, ITEM_IDS, RANKING, RETRIEVAL
from recsys.core.features import HISTORY_COLUMNS, FeatureRegistry
from recsys.core.tables import read_dataset
from recsys.serving.backends import InProcessBackend
from recsys.serving.funnel import Funnel
from recsys.serving.rerank import RerankConfig
from recsys.serving.snapshot import FeatureSnapshot


@dataclass
class FunnelEvaluation:
    k: int
    candidates_per_user: int
    funnel: PageQuality
    retrieval_order: PageQuality
    # The two-tower score's AUC on the eval impressions (the ranker's task).
    retrieval_score_impression_auc: float

    def metrics(self) -> dict[str, float]:
        """Flat, as logged: funnel_<metric> and retrieval_order_<metric>."""
        metrics = {"funnel_k": self.k, "candidates_per_user": self.candidates_per_user}
        for name, pages in (("funnel", self.funnel), ("retrieval_order", self.retrieval_order)):
            metrics.update({f"{name}_{metric}": value for metric, value in pages.metrics().items()})
        metrics["retrieval_score_impression_auc"] = self.retrieval_score_impression_auc
        return metrics


def evaluate_funnel(
    retrieval_model_dir: str,
    ranking_model_dir: str,
    item_embeddings_dir: str,
    eval_items: pd.DataFrame,
    task: RetrievalTask,
    config: RerankConfig,
    registry: FeatureRegistry,
    retrieval_score_auc: float,
) -> FunnelEvaluation:
    """Pages of the funnel (``config.k`` items) and of the retrieval order alone (the
    same candidates minus the user's history, cut to k). ``eval_items``: the item
    snapshot as of the start of the eval split."""
    features = FeatureSnapshot(None, eval_items, read_dataset(item_embeddings_dir), registry)
    backend = InProcessBackend({RETRIEVAL: retrieval_model_dir, RANKING: ranking_model_dir})
    funnel = Funnel(backend, features, config)
    funnel_pages = [page[ITEM_ID].to_numpy() for page, _, _ in funnel.pages(task.queries)]
    retrieved = call_in_batches(serving_fn(retrieval_model_dir), task.queries, ITEM_IDS)
    retrieval_pages = []
    for ids, history in zip(retrieved, task.queries[HISTORY_COLUMNS[0]], strict=True):
        ids = np.array([v.decode() if isinstance(v, bytes) else v for v in ids], dtype=object)
        retrieval_pages.append(ids[~np.isin(ids, np.asarray(history, dtype=object))][: config.k])
    catalog = features.item_index.to_numpy()

    def quality(pages):
        return page_quality(
            pages, task.users, task.positives, catalog, features.embeddings, config.k
        )

    return FunnelEvaluation(
        config.k,
        int(retrieved.shape[1]),
        quality(funnel_pages),
        quality(retrieval_pages),
        retrieval_score_auc,
    )
