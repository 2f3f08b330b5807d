"""KFP shim for validate."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output


def validate(
    train_events: Input[Dataset],
    eval_events: Input[Dataset],
    users: Input[Dataset],
    items: Input[Dataset],
    user_features: Input[Dataset],
    item_features: Input[Dataset],
    train_examples: Input[Dataset],
    eval_examples: Input[Dataset],
    serving_log: Input[Dataset],
    schema_dir: str,
    beam_pipeline_args: str,
    statistics_root: str,
    drift_baseline: str,
    anomaly_policy: str,
    pipeline_root: str,
    state_root: str,
    statistics: Output[Artifact],
    anomalies: Output[Artifact],
    schema: Output[Artifact],
    validation_report: Output[Markdown],
    validation_html: Output[HTML],
):
    import dataclasses

    from recsys.components.validate.config import ValidateConfig
    from recsys.components.validate.validate import export_schemas
    from recsys.components.validate.validate import validate as run_validate
    from recsys.core import storage
    from recsys.core.config import config_from
    from recsys.core.contracts import STATISTICS_DIR
    from recsys.core.progress import log, stage

    with stage("validate"):
        config = config_from(ValidateConfig, locals())
        if not config.statistics_root:
            config = dataclasses.replace(
                config, statistics_root=storage.join(state_root or pipeline_root, STATISTICS_DIR)
            )
        datasets = {
            "train_events": train_events,
            "eval_events": eval_events,
            "users": users,
            "items": items,
            "user_features": user_features,
            "item_features": item_features,
            "train_examples": train_examples,
            "eval_examples": eval_examples,
            "serving_log": serving_log,
        }
        summary = run_validate(
            {name: a.path for name, a in datasets.items()},
            schema_dir,
            statistics.path,
            anomalies.path,
            int(eval_examples.metadata["span_start"]),
            config,
            beam_pipeline_args,
            validation_html.path,
        )
        storage.write_text(validation_report.path, summary["markdown"])
        # Returning means nothing blocked: whatever was found is a warning.
        for line in [a.line() for a in summary["anomalies"]] + summary["notes"]:
            log("validate", line.strip(" -"))
        anomalies.metadata.update(
            warnings=len(summary["anomalies"]),
            notes=" | ".join(summary["notes"]),
            stored_span=summary["stored_span"] or "",
        )
        export_schemas(schema_dir, schema.path)
