"""KFP shims for features: the point-in-time join, then (after validate) transform."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def join_features(
    train_events: Input[Dataset],
    eval_events: Input[Dataset],
    users: Input[Dataset],
    items: Input[Dataset],
    user_features: Input[Dataset],
    item_features: Input[Dataset],
    schema_dir: str,
    feature_views: str,
    history_length: int,
    watched_horizon_days: int,
    watched_max_items: int,
    watched_from: str,
    beam_pipeline_args: str,
    batch_rows: int,
    train_examples: Output[Dataset],
    eval_examples: Output[Dataset],
    user_snapshot: Output[Dataset],
    item_snapshot: Output[Dataset],
    eval_item_snapshot: Output[Dataset],
    join_metrics: Output[Metrics],
):
    from recsys.components.features.config import JoinConfig
    from recsys.components.features.join import join_features as run_join
    from recsys.core.config import config_from
    from recsys.core.progress import stage
    from recsys.core.run_metrics import log_metrics

    with stage("features/join"):
        config = config_from(JoinConfig, locals())
        inputs = {
            "train_events": train_events,
            "eval_events": eval_events,
            "users": users,
            "items": items,
            "user_features": user_features,
            "item_features": item_features,
        }
        outputs = {
            "train_examples": train_examples,
            "eval_examples": eval_examples,
            "user_snapshot": user_snapshot,
            "item_snapshot": item_snapshot,
            "eval_item_snapshot": eval_item_snapshot,
        }
        as_of = int(train_events.metadata["as_of"])
        counts = run_join(
            {name: a.path for name, a in inputs.items()},
            as_of,
            schema_dir,
            {name: a.path for name, a in outputs.items()},
            config,
            beam_pipeline_args,
            eval_start=int(eval_events.metadata["eval_start"]),
            batch_rows=batch_rows,
        )
        log_metrics(join_metrics, counts)
        for name in ("train_examples", "eval_examples"):
            outputs[name].metadata.update(
                rows=counts[name], as_of=as_of, span_start=train_events.metadata["span_start"]
            )


def transform_features(
    train_examples: Input[Dataset],
    eval_examples: Input[Dataset],
    schema: Input[Artifact],
    beam_pipeline_args: str,
    transformed_train: Output[Dataset],
    transformed_eval: Output[Dataset],
    transform_graph: Output[Artifact],
):

    from recsys.components.features.transform import transform
    from recsys.core import storage
    from recsys.core.progress import stage

    with stage("features/transform"):
        temp_dir = transform_graph.path + "-tmp"
        transform(
            train_examples.path,
            eval_examples.path,
            schema.path,
            transform_graph.path,
            {"train": transformed_train.path, "eval": transformed_eval.path},
            temp_dir,
            beam_pipeline_args,
        )
        storage.remove(temp_dir)
