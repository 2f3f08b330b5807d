"""`recsys check`: the pipeline's data checks for one span, without training.

Runs the DAG in this process up to validate (ingest with its data contract, the
point-in-time join, validate with schema, skew and drift): the same wiring and
stages as a pipeline run, so a new data source or a schema edit can be tried in
seconds. Outputs land under ``workdir/<stage>/`` (``ingest/quarantine``,
``validate/statistics``, ``validate/anomalies``) and ``workdir/report.html``;
spans that pass are kept under ``statistics_root`` (default
``workdir/statistics``) as drift baselines, as a pipeline run keeps them under
its pipeline root.
"""

import json
import os
import shutil

from recsys.components.validate.validate import SUMMARY_FILE, Anomaly
from recsys.pipelines.in_process import run_in_process

REPORT = "report.html"


def check_span(data_root: str, workdir: str, parameters: dict | None = None) -> dict:
    """ingest -> join -> validate with ``parameters`` (pipeline parameters, e.g.
    ``as_of``, ``lookback_days``, ``anomaly_policy``); returns ``{"ingest": counts,
    "validate": summary, "report": path}`` or raises the stage's DataError /
    ValidationFailed (the report is written either way)."""
    workdir = os.path.abspath(workdir)
    arguments = {
        "data_root": data_root,
        "serving_root": os.path.join(workdir, "serving"),
        **(parameters or {}),
    }
    report = os.path.join(workdir, REPORT)
    if os.path.exists(report):
        os.remove(report)
    try:
        run = run_in_process(workdir, arguments, stop_after="validate")
    finally:
        html = os.path.join(workdir, "validate", "validation_html")
        if os.path.exists(html):
            shutil.copyfile(html, report)
    with open(os.path.join(run.artifact("validate", "anomalies").path, SUMMARY_FILE)) as handle:
        summary = json.load(handle)
    summary["anomalies"] = [Anomaly(**anomaly) for anomaly in summary["anomalies"]]
    return {
        "ingest": dict(run.artifact("ingest", "ingest_metrics").metadata),
        "validate": summary,
        "report": report,
    }
