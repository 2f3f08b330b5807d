"""KFP shim for evaluate."""

from kfp.dsl import (
    HTML,
    Artifact,
    ClassificationMetrics,
    Dataset,
    Input,
    Markdown,
    Metrics,
    Model,
    Output,
)


def evaluate(
    train_examples: Input[Dataset],
    eval_examples: Input[Dataset],
    query_model: Input[Model],
    item_embeddings: Input[Dataset],
    retrieval_model: Input[Model],
    ranking_model: Input[Model],
    candidate_sources: Input[Dataset],
    eval_item_snapshot: Input[Dataset],
    eval_events: Input[Dataset],
    infra_validation: Input[Artifact],
    schema_dir: str,
    recall_k: int,
    min_recall: float,
    min_recall_lift: float,
    min_auc: float,
    max_normalized_entropy: float,
    min_calibration_ratio: float,
    max_calibration_ratio: float,
    max_regression: float,
    max_slice_regression: float,
    min_slice_size: int,
    slice_top_categories: int,
    compare_with_champion: bool,
    compare_estimated_value: bool,
    rerank: str,
    serving_root: str,
    data_root: str,
    score_watch_weight: float,
    batch_rows: int,
    retrieval_metrics: Output[Metrics],
    ranking_metrics: Output[Metrics],
    funnel_metrics: Output[Metrics],
    ranking_roc: Output[ClassificationMetrics],
    reliability_png: Output[Artifact],
    blessing: Output[Artifact],
    evaluation_report: Output[Markdown],
    evaluation_html: Output[HTML],
):
    from recsys.components.evaluate.config import Thresholds
    from recsys.components.evaluate.evaluate import CandidateModels
    from recsys.components.evaluate.evaluate import evaluate as run_evaluate
    from recsys.core import storage
    from recsys.core.config import config_from
    from recsys.core.features import load_registry
    from recsys.core.progress import log, stage
    from recsys.core.run_metrics import log_metrics
    from recsys.serving.rerank import parse_rerank_config

    with stage("evaluate"):
        thresholds = config_from(Thresholds, locals())
        models = CandidateModels(
            retrieval_model.path,
            query_model.path,
            item_embeddings.path,
            ranking_model.path,
            candidate_sources.path,
        )
        result = run_evaluate(
            train_examples.path,
            eval_examples.path,
            models,
            eval_item_snapshot.path,
            infra_validation.path,
            thresholds,
            parse_rerank_config(rerank),
            blessing.path,
            serving_root,
            load_registry(schema_dir),
            eval_events.path,
            data_root,
            score_watch_weight,
            batch_rows,
        )
        for artifact, metrics in (
            (retrieval_metrics, result.retrieval.metrics()),
            (ranking_metrics, result.ranking.metrics()),
            (funnel_metrics, result.funnel.metrics()),
        ):
            log_metrics(artifact, metrics)
        champion = result.champion
        for role, served in (("candidate", champion.candidate), ("champion", champion.champion)):
            log_metrics(
                ranking_metrics,
                {
                    f"{role}_{metric.replace(' ', '_').replace('@', '_at_')}": by_slice["all"]
                    for metric, by_slice in (served.values if served else {}).items()
                },
            )
        roc = result.ranking.roc
        ranking_roc.log_roc_curve(roc.false_positive_rate, roc.true_positive_rate, roc.thresholds)
        storage.write_bytes(reliability_png.path, result.reliability_png)
        reliability_png.metadata["mime_type"] = "image/png"
        blessing.metadata["blessed"] = result.blessing["blessed"]
        blessing.metadata["reason"] = result.blessing["reason"]
        blessing.metadata["failed_checks"] = sum(
            c["passed"] is False for c in result.blessing["checks"]
        )
        storage.write_text(evaluation_report.path, result.markdown)
        storage.write_text(evaluation_html.path, result.html)
        blessing.metadata["caveats"] = result.blessing["caveats"]
        log("evaluate", result.blessing["reason"])
        for caveat in result.blessing["caveats"]:
            log("evaluate", f"caveat: {caveat}")
