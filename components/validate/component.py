"""KFP shim for validate."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Output


def validate(
    train_events: Input[Dataset],
    eval_events: Input[Dataset],
    users: Input[Dataset],
    items: Input[Dataset],
    user_features: Input[Dataset],
    item_features: Input[Dataset],
    schema_dir: str,
    beam_pipeline_args: str,
    statistics: Output[Artifact],
    anomalies: Output[Artifact],
    schema: Output[Artifact],
    validation_report: Output[Markdown],
    validation_html: Output[HTML],
):
    from components.validate.validate import export_schemas, validate as run_validate
    from recsys.progress import stage

    with stage("validate"):
        datasets = {"train_events": train_events, "eval_events": eval_events, "users": users,
                    "items": items, "user_features": user_features, "item_features": item_features}
        summary = run_validate({name: a.path for name, a in datasets.items()}, schema_dir,
                               statistics.path, anomalies.path, beam_pipeline_args,
                               validation_html.path)
        with open(validation_report.path, "w") as handle:
            handle.write(summary.pop("markdown"))
        for name, counts in summary.items():
            anomalies.metadata[name] = counts["anomalies"]
        export_schemas(schema_dir, schema.path)
