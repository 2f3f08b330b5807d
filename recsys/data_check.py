"""`recsys check`: the pipeline's data checks for one span, without training.

Runs the same stage functions the DAG chains (ingest with its data contract,
the point-in-time join, validate with schema, skew and drift) on a raw data
directory, so a new data source or a schema edit can be tried in seconds. The
outputs land under ``workdir`` (quarantine, statistics, anomalies, report.html);
spans that pass are stored under ``statistics_root`` as drift baselines.
"""

import os

from components.features.features import join_features
from components.ingest.ingest import ingest
from components.validate.validate import validate

# Dataset names, as the stages (and the DAG) pass them along.
TABLES = ["train_events", "eval_events", "users", "items", "user_features", "item_features"]
INGESTED = TABLES + ["serving_log", "quarantine"]
EXAMPLES = ["train_examples", "eval_examples"]
JOINED = EXAMPLES + ["user_snapshot", "item_snapshot"]
VALIDATED = TABLES + ["serving_log"] + EXAMPLES


def check_span(data_root: str, as_of: str, workdir: str, lookback_days: int = 14,
               eval_days: int = 3, schema_dir: str = "", statistics_root: str = "",
               drift_baseline: str = "", anomaly_policy: str = "{}",
               max_reject_rate: float = 0.01, input_encoding: str = "utf-8",
               feature_views: str = "{}") -> dict:
    """ingest -> join -> validate for the span ending at ``as_of``; returns
    ``{"ingest": counts, "validate": summary, "report": path}`` or raises the
    stage's DataError / ValidationFailed."""
    paths = {name: os.path.join(workdir, name) for name in INGESTED + JOINED}
    counts = ingest(data_root, as_of, lookback_days, eval_days,
                    {name: paths[name] for name in INGESTED}, schema_dir, max_reject_rate,
                    input_encoding)
    join_features({name: paths[name] for name in TABLES}, counts["as_of"], schema_dir,
                  {name: paths[name] for name in JOINED}, feature_views)
    report = os.path.join(workdir, "report.html")
    summary = validate({name: paths[name] for name in VALIDATED}, schema_dir,
                       os.path.join(workdir, "statistics"), os.path.join(workdir, "anomalies"),
                       counts["span_start"], report_path=report, statistics_root=statistics_root,
                       drift_baseline=drift_baseline, anomaly_policy=anomaly_policy)
    return {"ingest": counts, "validate": summary, "report": report}
