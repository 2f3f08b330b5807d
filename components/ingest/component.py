"""KFP shim for ingest. Imports live inside the body: KFP ships only this function."""

from kfp.dsl import Dataset, Metrics, Output


def ingest(
    data_root: str,
    schema_dir: str,
    as_of: str,
    lookback_days: int,
    eval_days: int,
    max_reject_rate: float,
    input_encoding: str,
    batch_rows: int,
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
    from recsys.components.ingest.config import IngestConfig
    from recsys.components.ingest.ingest import ingest as run_ingest
    from recsys.core.config import config_from
    from recsys.core.progress import log, stage
    from recsys.core.run_metrics import log_metrics

    with stage("ingest"):
        config = config_from(IngestConfig, locals())
        outputs = {
            "train_events": train_events,
            "eval_events": eval_events,
            "users": users,
            "items": items,
            "user_features": user_features,
            "item_features": item_features,
            "serving_log": serving_log,
            "quarantine": quarantine,
        }
        counts = run_ingest(
            data_root,
            {name: artifact.path for name, artifact in outputs.items()},
            config,
            schema_dir,
            batch_rows=batch_rows,
        )
        for name, artifact in outputs.items():
            artifact.metadata.update(
                rows=counts[name] if name != "quarantine" else counts["quarantined"],
                as_of=counts["as_of"],
                span_start=counts["span_start"],
                eval_start=counts["eval_start"],
            )
        log_metrics(ingest_metrics, counts)
        if counts["quarantined"]:
            log("ingest", f"quarantined {counts['quarantined']} row(s): {quarantine.path}")
