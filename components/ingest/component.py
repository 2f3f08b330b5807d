"""KFP shim for ingest. Imports live inside the body: KFP ships only this function."""

from kfp.dsl import Dataset, Metrics, Output


def ingest(
    data_root: str,
    as_of: str,
    lookback_days: int,
    eval_days: int,
    schema_dir: str,
    max_reject_rate: float,
    input_encoding: str,
    train_events: Output[Dataset],
    eval_events: Output[Dataset],
    users: Output[Dataset],
    items: Output[Dataset],
    user_features: Output[Dataset],
    item_features: Output[Dataset],
    serving_log: Output[Dataset],
    quarantine: Output[Dataset],
    ingest_metrics: Output[Metrics],
):
    from components.ingest.ingest import ingest as run_ingest
    from recsys.progress import log, stage

    with stage("ingest"):
        outputs = {"train_events": train_events, "eval_events": eval_events, "users": users,
                   "items": items, "user_features": user_features, "item_features": item_features,
                   "serving_log": serving_log, "quarantine": quarantine}
        counts = run_ingest(data_root, as_of, lookback_days, eval_days,
                            {name: artifact.path for name, artifact in outputs.items()},
                            schema_dir, max_reject_rate, input_encoding)
        for name, artifact in outputs.items():
            artifact.metadata.update(rows=counts[name] if name != "quarantine"
                                     else counts["quarantined"],
                                     as_of=counts["as_of"], span_start=counts["span_start"],
                                     eval_start=counts["eval_start"])
        for name, value in counts.items():
            ingest_metrics.log_metric(name, value)
        if counts["quarantined"]:
            log("ingest", f"quarantined {counts['quarantined']} row(s): {quarantine.path}")
