"""KFP shim for features."""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Output


def features(
    train_events: Input[Dataset],
    eval_events: Input[Dataset],
    users: Input[Dataset],
    items: Input[Dataset],
    user_features: Input[Dataset],
    item_features: Input[Dataset],
    schema: Input[Artifact],
    beam_pipeline_args: str,
    train_examples: Output[Dataset],
    eval_examples: Output[Dataset],
    user_snapshot: Output[Dataset],
    item_snapshot: Output[Dataset],
    transformed_train: Output[Dataset],
    transformed_eval: Output[Dataset],
    transform_graph: Output[Artifact],
    features_metrics: Output[Metrics],
):
    import shutil

    from components.features.features import build_features
    from recsys.progress import stage

    with stage("features"):
        inputs = {"train_events": train_events, "eval_events": eval_events, "users": users,
                  "items": items, "user_features": user_features, "item_features": item_features}
        outputs = {"train_examples": train_examples, "eval_examples": eval_examples,
                   "user_snapshot": user_snapshot, "item_snapshot": item_snapshot,
                   "transformed_train": transformed_train, "transformed_eval": transformed_eval,
                   "transform_graph": transform_graph}
        temp_dir = transform_graph.path + "-tmp"
        counts = build_features({name: a.path for name, a in inputs.items()},
                                int(train_events.metadata["as_of"]), schema.path,
                                {name: a.path for name, a in outputs.items()}, temp_dir,
                                beam_pipeline_args)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for name, value in counts.items():
            features_metrics.log_metric(name, value)
        for name in ("train_examples", "eval_examples"):
            outputs[name].metadata["rows"] = counts[name]
