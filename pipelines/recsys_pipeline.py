"""The recsys pipeline: one KFP DAG, read top to bottom in the order it runs.

ingest -> features (join) -> validate -> features (transform)
       -> train_retrieval, train_ranking -> infra_validate -> evaluate -> push

validate runs after the point-in-time join because training/serving skew and
drift are measured on the examples themselves; it checks the ingested tables in
the same step, and nothing is transformed or trained until it passes.

Every stage runs in the same project image. Stage logic lives in
``components/<stage>/``; this file only wires outputs to inputs.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Metrics

from components.evaluate.component import evaluate
from components.features.component import join_features, transform_features
from components.infra_validate.component import infra_validate
from components.ingest.component import ingest
from components.push.component import push
from components.train_ranking.component import train_ranking
from components.train_retrieval.component import train_retrieval
from components.validate.component import validate
from recsys import code_version

PIPELINE_NAME = "recsys-pipeline"
# Tag images immutably: KFP's cache key includes the image string, not its content.
DEFAULT_IMAGE = "localhost/recsys-pipeline:0.1.0"

PipelineOutputs = NamedTuple("PipelineOutputs", ingest_metrics=Metrics, quarantine=Dataset,
                             validation_report=Markdown, validation_html=HTML,
                             retrieval_training=Metrics, ranking_training=Metrics,
                             retrieval_metrics=Metrics, ranking_metrics=Metrics,
                             funnel_metrics=Metrics,
                             evaluation_report=Markdown, evaluation_html=HTML,
                             blessing=Artifact, push_report=Markdown)


def build_pipeline(image: str = DEFAULT_IMAGE):
    """The pipeline function; every stage runs in ``image`` unless a run sets the
    ``image`` parameter."""
    code = code_version()

    def stage(func):
        component = dsl.component(func, base_image=image, install_kfp_package=False)
        # KFP's cache key covers the image string and the command line, not what the
        # image holds; the code version on the command line (the executor ignores
        # unknown arguments) keeps a reused tag from serving results of older code.
        component.component_spec.implementation.container.args.extend(
            ["--code-version", code])
        return component

    def operate(task, image_parameter, cpu: str, memory: str, retries: int = 0,
                cache: bool = True):
        """Where and how a task runs on Kubeflow (the local runner ignores all of it)."""
        task.set_container_image(image_parameter)
        task.set_cpu_request(cpu).set_memory_request(memory).set_memory_limit(memory)
        if retries:  # transient storage and scheduling failures: try again, slower
            task.set_retry(num_retries=retries, backoff_duration="60s", backoff_factor=2.0)
        task.set_caching_options(cache)
        return task

    ingest_op, validate_op = stage(ingest), stage(validate)
    join_op, transform_op = stage(join_features), stage(transform_features)
    retrieval_op, ranking_op = stage(train_retrieval), stage(train_ranking)
    infra_op, evaluate_op, push_op = stage(infra_validate), stage(evaluate), stage(push)

    @dsl.pipeline(name=PIPELINE_NAME,
                  description="Raw interaction logs to two-tower retrieval and ranking "
                              "models pushed for TF Serving.")
    def recsys_pipeline(
        data_root: str,
        serving_root: str,
        image: str = image,
        as_of: str = "",
        lookback_days: int = 14,
        eval_days: int = 3,
        schema_dir: str = "",
        max_reject_rate: float = 0.01,
        input_encoding: str = "utf-8",
        statistics_root: str = "",
        drift_baseline: str = "",
        anomaly_policy: str = "{}",
        feature_views: str = "{}",
        history_length: int = 10,
        beam_pipeline_args: str = "[]",
        retrieval_epochs: int = 10,
        retrieval_embedding_dim: int = 32,
        retrieval_batch_size: int = 512,
        retrieval_learning_rate: float = 0.05,
        retrieval_temperature: float = 0.1,
        retrieval_top_k: int = 100,
        retrieval_uniform_negatives: int = 256,
        retrieval_positive_weighting: str = "none",
        retrieval_early_stopping_patience: int = 2,
        retrieval_ann_index: str = "",
        ranking_epochs: int = 3,
        ranking_embedding_dim: int = 16,
        ranking_cross_layers: int = 2,
        ranking_cross_projection_dim: int = 0,
        ranking_batch_size: int = 1024,
        ranking_learning_rate: float = 0.002,
        ranking_id_dropout: float = 0.1,
        ranking_negative_sampling_rate: float = 1.0,
        ranking_watch_loss_weight: float = 1.0,
        ranking_score_watch_weight: float = 1.0,
        warm_start: bool = False,
        rerank: str = '{"k": 10, "max_per_creator": 2}',
        seed: int = 42,
        max_load_seconds: float = 60.0,
        max_request_ms: float = 100.0,
        recall_k: int = 50,
        min_recall: float = 0.0,
        min_recall_lift: float = 1.05,
        min_auc: float = 0.55,
        max_normalized_entropy: float = 1.0,
        min_calibration_ratio: float = 0.8,
        max_calibration_ratio: float = 1.25,
        max_regression: float = 0.02,
        max_slice_regression: float = 0.05,
        min_slice_size: int = 30,
        slice_top_categories: int = 3,
        compare_with_champion: bool = True,
        keep_versions: int = 5,
        tf_serving_root: str = "",
    ) -> PipelineOutputs:
        # 1. ingest: every row checked against the data contract, bad rows
        #    quarantined; the time window, split by time
        ingested = ingest_op(data_root=data_root, as_of=as_of, lookback_days=lookback_days,
                             eval_days=eval_days, schema_dir=schema_dir,
                             max_reject_rate=max_reject_rate, input_encoding=input_encoding)
        # No cache: it reads external data that changes under one path.
        operate(ingested, image, cpu="1", memory="4G", retries=2, cache=False)
        tables = {name: ingested.outputs[name] for name in
                  ("train_events", "eval_events", "users", "items", "user_features",
                   "item_features")}

        # 2. features, part 1: point-in-time joins (feature views, engagement
        #    history) into examples, on Beam
        joined = join_op(**tables, schema_dir=schema_dir, feature_views=feature_views,
                         history_length=history_length, beam_pipeline_args=beam_pipeline_args)
        operate(joined, image, cpu="2", memory="8G", retries=2)

        # 3. validate: schema, training/serving skew and drift; blocks on anomalies
        validated = validate_op(
            **tables, train_examples=joined.outputs["train_examples"],
            eval_examples=joined.outputs["eval_examples"],
            serving_log=ingested.outputs["serving_log"], schema_dir=schema_dir,
            beam_pipeline_args=beam_pipeline_args, statistics_root=statistics_root,
            drift_baseline=drift_baseline, anomaly_policy=anomaly_policy,
            pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER)
        # No cache: it reads and writes the drift baseline store.
        operate(validated, image, cpu="2", memory="8G", retries=2, cache=False)

        # 4. features, part 2: tensorflow-transform, analyzed on train only
        featurized = transform_op(train_examples=joined.outputs["train_examples"],
                                  eval_examples=joined.outputs["eval_examples"],
                                  schema=validated.outputs["schema"],
                                  beam_pipeline_args=beam_pipeline_args)
        operate(featurized, image, cpu="2", memory="8G", retries=2)

        # 5. train_retrieval: two-tower model (logQ-corrected mixed negatives, early
        #    stopping on eval recall) with a brute-force top-K index; with warm_start,
        #    initialised from the last blessed model (found under the pipeline root)
        retrieval = retrieval_op(
            transformed_train=featurized.outputs["transformed_train"],
            transformed_eval=featurized.outputs["transformed_eval"],
            transform_graph=featurized.outputs["transform_graph"],
            item_snapshot=joined.outputs["item_snapshot"],
            epochs=retrieval_epochs, embedding_dim=retrieval_embedding_dim,
            batch_size=retrieval_batch_size, learning_rate=retrieval_learning_rate,
            temperature=retrieval_temperature, top_k=retrieval_top_k,
            uniform_negatives=retrieval_uniform_negatives,
            positive_weighting=retrieval_positive_weighting,
            early_stopping_patience=retrieval_early_stopping_patience,
            ann_index=retrieval_ann_index, seed=seed, warm_start=warm_start,
            pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER)
        # No cache: a warm start's checkpoint is found at run time, outside the
        # inputs KFP's cache key covers.
        operate(retrieval, image, cpu="2", memory="8G", cache=False)

        # 6. train_ranking: DCN-v2 with click and watch-time heads over user, item,
        #    context and user x item features (calibrated under negative downsampling)
        ranking = ranking_op(
            transformed_train=featurized.outputs["transformed_train"],
            transformed_eval=featurized.outputs["transformed_eval"],
            transform_graph=featurized.outputs["transform_graph"],
            epochs=ranking_epochs, embedding_dim=ranking_embedding_dim,
            cross_layers=ranking_cross_layers, cross_projection_dim=ranking_cross_projection_dim,
            batch_size=ranking_batch_size, learning_rate=ranking_learning_rate,
            id_dropout=ranking_id_dropout,
            negative_sampling_rate=ranking_negative_sampling_rate,
            watch_loss_weight=ranking_watch_loss_weight,
            score_watch_weight=ranking_score_watch_weight, seed=seed, warm_start=warm_start,
            pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER)
        operate(ranking, image, cpu="2", memory="8G", cache=False)

        # 7. infra_validate: each SavedModel loads in a fresh process with only
        #    TensorFlow, takes the serving contract and answers its warmup requests
        #    within budget
        infra = infra_op(retrieval_model=retrieval.outputs["retrieval_model"],
                         ranking_model=ranking.outputs["ranking_model"],
                         eval_examples=joined.outputs["eval_examples"], schema_dir=schema_dir,
                         max_load_seconds=max_load_seconds, max_request_ms=max_request_ms)
        operate(infra, image, cpu="1", memory="4G")

        # 8. evaluate: value thresholds (retrieval against popularity, ranking
        #    calibration), the whole funnel, change thresholds against the model
        #    serving now (overall and per slice) and infra validation; writes the
        #    blessing with every check
        evaluation = evaluate_op(
            train_examples=joined.outputs["train_examples"],
            eval_examples=joined.outputs["eval_examples"],
            query_model=retrieval.outputs["query_model"],
            item_embeddings=retrieval.outputs["item_embeddings"],
            retrieval_model=retrieval.outputs["retrieval_model"],
            ranking_model=ranking.outputs["ranking_model"],
            eval_item_snapshot=joined.outputs["eval_item_snapshot"],
            infra_validation=infra.outputs["infra_validation"],
            recall_k=recall_k, min_recall=min_recall, min_recall_lift=min_recall_lift,
            min_auc=min_auc, max_normalized_entropy=max_normalized_entropy,
            min_calibration_ratio=min_calibration_ratio,
            max_calibration_ratio=max_calibration_ratio, max_regression=max_regression,
            max_slice_regression=max_slice_regression, min_slice_size=min_slice_size,
            slice_top_categories=slice_top_categories,
            compare_with_champion=compare_with_champion, rerank=rerank,
            serving_root=serving_root)
        # No cache: the serving model it compares with changes.
        operate(evaluation, image, cpu="2", memory="8G", cache=False)

        # 9. push: only blessed models reach the serving root, as one new version,
        #    atomically, with the warmup requests infra validation replayed; their
        #    warm-start checkpoints are kept under the pipeline root
        pushed = push_op(
            blessing=evaluation.outputs["blessing"],
            retrieval_model=retrieval.outputs["retrieval_model"],
            ranking_model=ranking.outputs["ranking_model"],
            warmup_requests=infra.outputs["warmup_requests"],
            user_snapshot=joined.outputs["user_snapshot"],
            item_snapshot=joined.outputs["item_snapshot"],
            item_embeddings=retrieval.outputs["item_embeddings"],
            ingest_metrics=ingested.outputs["ingest_metrics"],
            rerank=rerank, serving_root=serving_root, tf_serving_root=tf_serving_root,
            retrieval_checkpoint=retrieval.outputs["checkpoint"],
            ranking_checkpoint=ranking.outputs["checkpoint"],
            keep_versions=keep_versions, image=image,
            pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER)
        # No cache: a side effect on the serving root, every run. Retrying is safe:
        # pushing what is already served is a no-op.
        operate(pushed, image, cpu="1", memory="2G", retries=2, cache=False)

        return PipelineOutputs(ingest_metrics=ingested.outputs["ingest_metrics"],
                               quarantine=ingested.outputs["quarantine"],
                               validation_report=validated.outputs["validation_report"],
                               validation_html=validated.outputs["validation_html"],
                               retrieval_training=retrieval.outputs["retrieval_training"],
                               ranking_training=ranking.outputs["ranking_training"],
                               retrieval_metrics=evaluation.outputs["retrieval_metrics"],
                               ranking_metrics=evaluation.outputs["ranking_metrics"],
                               funnel_metrics=evaluation.outputs["funnel_metrics"],
                               evaluation_report=evaluation.outputs["evaluation_report"],
                               evaluation_html=evaluation.outputs["evaluation_html"],
                               blessing=evaluation.outputs["blessing"],
                               push_report=pushed.outputs["push_report"])

    return recsys_pipeline


def compile_pipeline(path: str, image: str = DEFAULT_IMAGE) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(image), path)
    return path
