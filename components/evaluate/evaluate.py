"""Evaluate: everything the release gate decides on, measured in one step.

Retrieval over the full catalog against popularity (``retrieval``), the ranker
against the constant-CTR prior (``ranking``), the whole funnel as served against
the retrieval order (``funnel``), the candidate against the models serving now
(``champion``); then the gate (``gate``) turns them into a blessing with every
check, and ``report`` renders it. Each returns a typed result.
"""

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from recsys.components.evaluate import caveats, gate, report
from recsys.components.evaluate.champion import ChampionComparison, champion_checks, value_check
from recsys.components.evaluate.data import EvalData, TrainingClicks
from recsys.components.evaluate.funnel import LOGGED_COLUMNS, FunnelEvaluation, evaluate_funnel
from recsys.components.evaluate.ranking import RankingEvaluation, evaluate_ranking
from recsys.components.evaluate.retrieval import (
    RetrievalEvaluation,
    RetrievalTask,
    evaluate_retrieval,
    retrieval_impression_auc,
)
from recsys.core import storage
from recsys.core.contracts import BLESSING_CHAMPION, PROPENSITY, RANKING, RETRIEVAL
from recsys.core.features import FeatureRegistry, load_registry
from recsys.core.ground_truth import Oracle, has_ground_truth
from recsys.core.limits import BATCH_ROWS
from recsys.core.tables import dataset_pattern, read_dataset
from recsys.serving.rerank import RerankConfig


@dataclass
class CandidateModels:
    """What train_retrieval and train_ranking exported (directories)."""

    retrieval_model: str
    query_model: str
    item_embeddings: str
    ranking_model: str
    # The other candidate sources (co-engagement, popular); empty: the two-tower alone.
    candidate_sources: str = ""


@dataclass
class Evaluation:
    retrieval: RetrievalEvaluation
    ranking: RankingEvaluation
    funnel: FunnelEvaluation
    champion: ChampionComparison
    blessing: dict  # as written to the blessing file
    markdown: str = field(repr=False)
    html: str = field(repr=False)
    reliability_png: bytes = field(repr=False)


def read_infra_validation(path: str) -> dict:
    """Infra validation's result; a missing or unreadable one fails closed in the gate."""
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError) as error:
        return {"models": {}, "error": f"{path}: {error}"}


def evaluate(
    train_examples_dir: str,
    eval_examples_dir: str,
    models: CandidateModels,
    eval_item_snapshot_dir: str,
    infra_validation_path: str,
    thresholds: gate.Thresholds,
    rerank_config: RerankConfig,
    blessing_path: str,
    serving_root: str = "",
    registry: FeatureRegistry | None = None,
    eval_events_dir: str = "",
    data_root: str = "",
    watch_weight: float = 1.0,
    batch_rows: int = BATCH_ROWS,
) -> Evaluation:
    """Measure the candidate, compare it with the version serving now (if any), decide
    and write the blessing to ``blessing_path``. ``eval_events_dir``: the eval
    impressions as ingested (their propensities, if any, give off-policy estimates);
    ``data_root``: where synthetic data keeps its ground truth, if it does;
    ``watch_weight``: the ranker's score_watch_weight (pages are valued as its score).
    The examples are streamed ``batch_rows`` at a time (``data``)."""
    registry = registry or load_registry()
    category = registry.role("category")
    if pa.default_memory_pool().backend_name == "jemalloc":
        # Hand Arrow's freed batches back to the OS at once: this task reads every
        # training and eval batch, and jemalloc's default decay kept about 0.3 GiB
        # of them resident at x100.
        pa.jemalloc_set_decay_ms(0)
    train = TrainingClicks.read(train_examples_dir, batch_rows)
    data = EvalData.read(eval_examples_dir, category, batch_rows)
    eval_items = read_dataset(eval_item_snapshot_dir)
    eval_events = (
        read_dataset(eval_events_dir, columns=_event_columns(eval_events_dir))
        if eval_events_dir
        else None
    )
    oracle = Oracle.load(data_root) if has_ground_truth(data_root) else None
    task = RetrievalTask.of(train, data)
    retrieval = evaluate_retrieval(
        models.query_model,
        models.item_embeddings,
        models.retrieval_model,
        task,
        sorted({10, thresholds.recall_k, 100}),
        models.candidate_sources,
        thresholds.recall_k,
    )
    ranking = evaluate_ranking(models.ranking_model, train.click_rate, data)

    def funnel_of(
        retrieval_model, ranking_model, item_embeddings, rules, sources, auc=float("nan")
    ):
        return evaluate_funnel(
            retrieval_model,
            ranking_model,
            item_embeddings,
            sources,
            eval_items,
            data,
            task,
            rules,
            registry,
            auc,
            eval_events,
            oracle,
            watch_weight,
        )

    funnel = funnel_of(
        models.retrieval_model,
        models.ranking_model,
        models.item_embeddings,
        rerank_config,
        models.candidate_sources,
        retrieval_impression_auc(models.query_model, models.item_embeddings, data),
    )
    infra = read_infra_validation(infra_validation_path)
    champion = champion_checks(
        serving_root,
        {RETRIEVAL: models.retrieval_model, RANKING: models.ranking_model},
        task,
        data,
        thresholds,
        category,
    )
    estimated, champion_funnel = value_check(serving_root, champion, funnel, funnel_of, thresholds)
    if champion_funnel is not None:
        funnel.champion = champion_funnel.variants["funnel"]
    retrieval_metrics, ranking_metrics = retrieval.metrics(), ranking.metrics()
    checks = (
        gate.value_checks(retrieval_metrics, ranking_metrics, thresholds)
        + champion.checks
        + estimated
        + gate.infra_checks(infra)
    )
    blessing = gate.decide(checks, thresholds, champion.note)
    k = thresholds.recall_k
    blessing["caveats"] = (
        caveats.eval_size(
            task,
            retrieval_metrics.get(f"recall_at_{k}"),
            retrieval_metrics.get(f"recall_at_{k}_margin"),
            k,
        )
        + caveats.training_history(task)
        + caveats.rerank_caps(rerank_config, eval_items, registry)
    )
    blessing.update(
        **{BLESSING_CHAMPION: champion.summary()},
        infra_validation=infra,
        metrics={
            "retrieval": retrieval_metrics,
            "ranking": ranking_metrics,
            "funnel": funnel.metrics(),
        },
    )
    storage.write_text(blessing_path, json.dumps(blessing, indent=2, default=_jsonable))
    return Evaluation(
        retrieval,
        ranking,
        funnel,
        champion,
        blessing,
        report.markdown(retrieval, ranking, funnel, blessing),
        report.render(retrieval, ranking, funnel, blessing),
        report.reliability_png(ranking.calibration),
    )


def _event_columns(eval_events_dir: str) -> list[str]:
    """What the off-policy estimates and the truth read of the eval impressions."""
    names = storage.parquet_schema(storage.glob(dataset_pattern(eval_events_dir))[0]).names
    return [name for name in [*LOGGED_COLUMNS, PROPENSITY] if name in names]


def _jsonable(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)
