"""The DAG, wired once, read top to bottom in the order it runs.

ingest -> features (join) -> validate -> features (transform)
       -> train_retrieval, train_ranking -> infra_validate -> evaluate -> push

validate runs after the point-in-time join because training/serving skew and
drift are measured on the examples themselves; it checks the ingested tables in
the same step, and nothing is transformed or trained until it passes.

``wire`` is the only place outputs meet inputs. ``kfp_pipeline`` calls it with
KFP components (compiling the YAML that runs on Kubeflow and locally), and
``in_process`` calls it with the same shims run in this process (data checks,
tests, benchmarks, over the whole DAG or a slice of it). Stage logic lives in
``components/<stage>/``.
"""

from recsys.components.evaluate.component import evaluate
from recsys.components.evaluate.config import Thresholds
from recsys.components.features.component import join_features, transform_features
from recsys.components.features.config import JoinConfig
from recsys.components.infra_validate.component import infra_validate
from recsys.components.infra_validate.config import Budgets
from recsys.components.ingest.component import ingest
from recsys.components.ingest.config import IngestConfig
from recsys.components.push.component import push
from recsys.components.push.config import PushConfig
from recsys.components.train_ranking.component import train_ranking
from recsys.components.train_ranking.config import RankingConfig
from recsys.components.train_retrieval.component import train_retrieval
from recsys.components.train_retrieval.config import RetrievalConfig
from recsys.components.validate.component import validate
from recsys.components.validate.config import ValidateConfig
from recsys.core import contracts
from recsys.pipelines.parameters import Arguments

# Every stage's KFP shim, in the order the DAG runs them.
STAGES = {
    shim.__name__: shim
    for shim in (
        ingest,
        join_features,
        validate,
        transform_features,
        train_retrieval,
        train_ranking,
        infra_validate,
        evaluate,
        push,
    )
}
# What a run returns (and ``recsys run`` summarises): stage -> outputs.
OUTPUTS = {
    "ingest": ["ingest_metrics", "quarantine"],
    "validate": ["validation_report", "validation_html"],
    "train_retrieval": ["retrieval_training"],
    "train_ranking": ["ranking_training"],
    "evaluate": [
        "retrieval_metrics",
        "ranking_metrics",
        "funnel_metrics",
        "evaluation_report",
        "evaluation_html",
        "blessing",
    ],
    "push": ["push_report"],
}


def wire(stages, p: Arguments) -> dict:
    """Call each stage of ``stages`` (attributes named like ``STAGES``; each returns a
    task with ``outputs``) with its arguments from ``p`` and its upstream outputs;
    ``stages.configure`` says where and how a task runs on Kubeflow. Returns the
    pipeline's outputs (``OUTPUTS``) by name."""
    tasks = {}

    # 1. ingest: every row checked against the data contract, bad rows quarantined;
    #    the time window, split by time. No cache: it reads external data that
    #    changes under one path.
    tasks["ingest"] = ingested = stages.ingest(
        data_root=p["data_root"],
        schema_dir=p["schema_dir"],
        batch_rows=p["batch_rows"],
        **p.of(IngestConfig),
    )
    stages.configure(ingested, cpu="1", memory="4G", retries=2, cache=False)
    tables = {name: ingested.outputs[name] for name in contracts.JOIN_INPUTS}

    # 2. features, part 1: point-in-time joins (feature views, engagement history)
    #    into examples, on Beam
    joined = stages.join_features(
        **tables,
        schema_dir=p["schema_dir"],
        beam_pipeline_args=p["beam_pipeline_args"],
        batch_rows=p["batch_rows"],
        **p.of(JoinConfig),
    )
    stages.configure(joined, cpu="2", memory="8G", retries=2)

    # 3. validate: schema, training/serving skew and drift; blocks on anomalies.
    #    No cache: it reads and writes the drift baseline store.
    tasks["validate"] = validated = stages.validate(
        **tables,
        train_examples=joined.outputs[contracts.TRAIN_EXAMPLES],
        eval_examples=joined.outputs[contracts.EVAL_EXAMPLES],
        serving_log=ingested.outputs[contracts.SERVING_LOG],
        schema_dir=p["schema_dir"],
        beam_pipeline_args=p["beam_pipeline_args"],
        pipeline_root=stages.pipeline_root,
        state_root=p["state_root"],
        **p.of(ValidateConfig),
    )
    stages.configure(validated, cpu="2", memory="8G", retries=2, cache=False)

    # 4. features, part 2: tensorflow-transform, analyzed on train only
    featurized = stages.transform_features(
        train_examples=joined.outputs[contracts.TRAIN_EXAMPLES],
        eval_examples=joined.outputs[contracts.EVAL_EXAMPLES],
        schema=validated.outputs["schema"],
        beam_pipeline_args=p["beam_pipeline_args"],
    )
    stages.configure(featurized, cpu="2", memory="8G", retries=2)
    transformed = {
        name: featurized.outputs[name]
        for name in ("transformed_train", "transformed_eval", "transform_graph")
    }

    # 5. train_retrieval: two-tower model (logQ-corrected mixed negatives, early
    #    stopping on eval recall) with a brute-force top-K index, and the other
    #    candidate sources (co-engagement, popular) counted from the examples; with warm_start,
    #    initialised from the last blessed model (found under the pipeline root).
    #    No cache: that checkpoint is found at run time, outside KFP's cache key.
    tasks["train_retrieval"] = retrieval = stages.train_retrieval(
        **transformed,
        item_snapshot=joined.outputs[contracts.ITEM_SNAPSHOT],
        train_examples=joined.outputs[contracts.TRAIN_EXAMPLES],
        schema_dir=p["schema_dir"],
        warm_start=p["warm_start"],
        pipeline_root=stages.pipeline_root,
        state_root=p["state_root"],
        image=p["image"],
        shuffle_buffer=p["shuffle_buffer"],
        training_workers=p["training_workers"],
        batch_rows=p["batch_rows"],
        **p.of(RetrievalConfig),
    )
    stages.configure(retrieval, cpu="2", memory="8G", cache=False)

    # 6. train_ranking: DCN-v2 with click and watch-time heads over user, item,
    #    context and user x item features (calibrated under negative downsampling)
    tasks["train_ranking"] = ranking = stages.train_ranking(
        **transformed,
        schema_dir=p["schema_dir"],
        warm_start=p["warm_start"],
        pipeline_root=stages.pipeline_root,
        state_root=p["state_root"],
        image=p["image"],
        shuffle_buffer=p["shuffle_buffer"],
        training_workers=p["training_workers"],
        # A log of consumptions (a ratings log) adds the ranker's consumption head.
        watched_from=p["watched_from"],
        **p.of(RankingConfig),
    )
    stages.configure(ranking, cpu="2", memory="8G", cache=False)

    # 7. infra_validate: the SavedModels load in a fresh process with only
    #    TensorFlow, take the serving contract and answer their warmup requests
    #    within budget
    infra = stages.infra_validate(
        retrieval_model=retrieval.outputs["retrieval_model"],
        ranking_model=ranking.outputs["ranking_model"],
        eval_examples=joined.outputs[contracts.EVAL_EXAMPLES],
        schema_dir=p["schema_dir"],
        **p.of(Budgets),
    )
    stages.configure(infra, cpu="1", memory="4G")

    # 8. evaluate: value thresholds (retrieval against popularity, ranking
    #    calibration), the whole funnel and what each stage adds (off policy with
    #    logged propensities, in truth on synthetic data), change thresholds against
    #    the model serving now (overall and per slice) and infra validation; writes
    #    the blessing with every check. No cache: the serving model it compares with changes.
    tasks["evaluate"] = evaluation = stages.evaluate(
        train_examples=joined.outputs[contracts.TRAIN_EXAMPLES],
        eval_examples=joined.outputs[contracts.EVAL_EXAMPLES],
        query_model=retrieval.outputs["query_model"],
        item_embeddings=retrieval.outputs["item_embeddings"],
        retrieval_model=retrieval.outputs["retrieval_model"],
        ranking_model=ranking.outputs["ranking_model"],
        candidate_sources=retrieval.outputs[contracts.SNAPSHOT_CANDIDATE_SOURCES],
        eval_item_snapshot=joined.outputs[contracts.EVAL_ITEM_SNAPSHOT],
        eval_events=ingested.outputs[contracts.EVAL_EVENTS],
        infra_validation=infra.outputs["infra_validation"],
        schema_dir=p["schema_dir"],
        rerank=p["rerank"],
        serving_root=p["serving_root"],
        data_root=p["data_root"],
        # Pages are valued as the ranker's score values an impression.
        score_watch_weight=p["ranking_score_watch_weight"],
        batch_rows=p["batch_rows"],
        **p.of(Thresholds),
    )
    stages.configure(evaluation, cpu="2", memory="8G", cache=False)

    # 9. push: only blessed models reach the serving root, as one new version,
    #    atomically, with the warmup requests infra validation replayed; their
    #    warm-start checkpoints are kept under the pipeline root. No cache: a side
    #    effect on the serving root, every run. Retrying is safe: pushing what is
    #    already served is a no-op.
    tasks["push"] = pushed = stages.push(
        blessing=evaluation.outputs["blessing"],
        retrieval_model=retrieval.outputs["retrieval_model"],
        ranking_model=ranking.outputs["ranking_model"],
        warmup_requests=infra.outputs["warmup_requests"],
        user_snapshot=joined.outputs[contracts.USER_SNAPSHOT],
        item_snapshot=joined.outputs[contracts.ITEM_SNAPSHOT],
        item_embeddings=retrieval.outputs["item_embeddings"],
        query_model=retrieval.outputs["query_model"],
        candidate_sources=retrieval.outputs[contracts.SNAPSHOT_CANDIDATE_SOURCES],
        ingest_metrics=ingested.outputs["ingest_metrics"],
        join_metrics=joined.outputs["join_metrics"],
        retrieval_checkpoint=retrieval.outputs["checkpoint"],
        ranking_checkpoint=ranking.outputs["checkpoint"],
        schema_dir=p["schema_dir"],
        rerank=p["rerank"],
        serving_root=p["serving_root"],
        image=p["image"],
        pipeline_root=stages.pipeline_root,
        state_root=p["state_root"],
        **p.of(PushConfig),
    )
    stages.configure(pushed, cpu="1", memory="2G", retries=2, cache=False)

    # (A stage given to an in-process run may bring only some of its outputs.)
    return {
        name: tasks[stage].outputs[name]
        for stage, names in OUTPUTS.items()
        for name in names
        if name in tasks[stage].outputs
    }
