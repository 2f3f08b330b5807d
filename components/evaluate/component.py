"""KFP shim for evaluate."""

from kfp.dsl import (HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics,
                     Model, Output)


def evaluate(
    train_examples: Input[Dataset],
    eval_examples: Input[Dataset],
    query_model: Input[Model],
    item_embeddings: Input[Dataset],
    retrieval_model: Input[Model],
    ranking_model: Input[Model],
    eval_item_snapshot: Input[Dataset],
    infra_validation: Input[Artifact],
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
    rerank: str,
    serving_root: str,
    retrieval_metrics: Output[Metrics],
    ranking_metrics: Output[Metrics],
    funnel_metrics: Output[Metrics],
    ranking_roc: Output[ClassificationMetrics],
    reliability_png: Output[Artifact],
    blessing: Output[Artifact],
    evaluation_report: Output[Markdown],
    evaluation_html: Output[HTML],
):
    from components.evaluate.evaluate import evaluate as run_evaluate
    from components.evaluate.gate import Thresholds
    from components.rerank.rerank import parse_rerank_config
    from recsys.progress import log, stage

    with stage("evaluate"):
        thresholds = Thresholds(recall_k=recall_k, min_recall=min_recall,
                                min_recall_lift=min_recall_lift, min_auc=min_auc,
                                max_normalized_entropy=max_normalized_entropy,
                                min_calibration_ratio=min_calibration_ratio,
                                max_calibration_ratio=max_calibration_ratio,
                                max_regression=max_regression,
                                max_slice_regression=max_slice_regression,
                                min_slice_size=min_slice_size,
                                slice_top_categories=slice_top_categories,
                                compare_with_champion=compare_with_champion)
        result = run_evaluate(train_examples.path, eval_examples.path, query_model.path,
                              item_embeddings.path, retrieval_model.path, ranking_model.path,
                              eval_item_snapshot.path, infra_validation.path, thresholds,
                              parse_rerank_config(rerank),
                              blessing.path, serving_root)
        for name, value in result["retrieval"].items():
            retrieval_metrics.log_metric(name, value)
        for name, value in result["ranking"].items():
            ranking_metrics.log_metric(name, value)
        for name, value in result["funnel"].items():
            funnel_metrics.log_metric(name, value)
        champion = result["champion"]
        for role in ("candidate", "champion"):
            for metric, by_slice in champion.get(role, {}).items():
                name = metric.replace(" ", "_").replace("@", "_at_")
                ranking_metrics.log_metric(f"{role}_{name}", by_slice["all"])
        ranking_roc.log_roc_curve(*result["roc"])
        with open(reliability_png.path, "wb") as handle:
            handle.write(result["reliability_png"])
        reliability_png.metadata["mime_type"] = "image/png"
        blessing.metadata["blessed"] = result["blessing"]["blessed"]
        blessing.metadata["reason"] = result["blessing"]["reason"]
        blessing.metadata["failed_checks"] = sum(c["passed"] is False
                                                 for c in result["blessing"]["checks"])
        with open(evaluation_report.path, "w") as handle:
            handle.write(result["markdown"])
        with open(evaluation_html.path, "w") as handle:
            handle.write(result["html"])
        log("evaluate", result["blessing"]["reason"])
