"""``recsys simulate``: N consecutive daily retrains, locally, on a synthetic timeline.

What a recurring run does on Kubeflow, day after day, without a cluster: one
synthetic dataset covers the lookback window plus N days (with optional drift
from a chosen day on); day i runs the compiled pipeline with ``as_of`` = the
midnight that ends day i and ``warm_start`` on. All days share one workdir, so
what a run needs from earlier runs is where a scheduled run finds it: drift
baselines and blessed checkpoints under the pipeline root, the champion in the
serving root. Each day's outcome (data volume, drift scores, metrics, gate
decision, served version) goes into a timeline report (HTML and PNG).

A run that fails (validate blocks drift, say) is a result here, not an error:
the timeline records at which stage and why, and nothing is pushed that day.
"""

import base64
import glob
import html
import json
import os
import re

import pandas as pd
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2

from recsys.app import fork_server, local_run
from recsys.core.contracts import MODELS, RETRIEVAL
from recsys.core.derived import DAY
from recsys.core.progress import log
from recsys.serving import serving_root as root_

START = "2026-01-05"
FAILED_STAGE = re.compile(r"\] ([\w/-]+): FAILED after [\d.]+s(?: \([^)]*\))?: (.*)")


def drift_scores(anomalies_file: str) -> dict | None:
    """Per drift measurement, value / threshold, and the features TFDV flagged."""
    if not os.path.exists(anomalies_file):
        return None  # no baseline: drift was not checked
    with open(anomalies_file) as handle:
        result = text_format.Parse(handle.read(), anomalies_pb2.Anomalies())
    ratios = {}
    for info in result.drift_skew_info:
        for measurement in info.drift_measurements:
            if measurement.threshold > 0:
                feature = ".".join(info.path.step)
                ratios[feature] = max(
                    ratios.get(feature, 0.0), measurement.value / measurement.threshold
                )
    worst = max(ratios, key=ratios.get) if ratios else ""
    return {
        "flagged": sorted(result.anomaly_info),
        "max_ratio": ratios.get(worst, 0.0),
        "worst_feature": worst,
    }


def _int_or_none(value):
    return None if value is None else int(value)  # KFP metadata stores numbers as floats


def newest_run_dir(pipeline_root: str) -> str:
    runs = glob.glob(os.path.join(pipeline_root, "recsys-pipeline-*"))
    return max(runs, key=os.path.getmtime) if runs else ""


def failure(log_path: str) -> tuple[str, str]:
    """(stage, first line of its error) from a failed run's log."""
    with open(log_path) as handle:
        for line in handle:
            found = FAILED_STAGE.search(line)
            if found:
                return found.group(1), found.group(2)
    return "pipeline", f"see {log_path}"


def day_outcome(
    day: int, as_of: pd.Timestamp, workdir: str, data_root: str, config: dict, events: pd.Series
) -> dict:
    label = f"day{day:02d}"
    outcome = {
        "day": day,
        "as_of": as_of.strftime("%Y-%m-%d"),
        "span_events": int(
            ((events >= as_of.timestamp() - DAY) & (events < as_of.timestamp())).sum()
        ),
    }
    try:
        outputs = local_run.run(
            workdir, data_root, {**config, "as_of": outcome["as_of"]}, label=label
        )
    except local_run.RunFailed:
        stage, reason = failure(os.path.join(local_run.run_dir(workdir, label), local_run.LOG_FILE))
        outcome.update(status=f"stopped at {stage}", reason=reason, blessed=False, pushed=False)
    else:
        blessing = outputs["blessing"]["metadata"]
        push = outputs["push_report"]["metadata"]
        k = int(config.get("recall_k", 50))
        retrieval = outputs["retrieval_metrics"]["metadata"]
        outcome.update(
            blessed=bool(blessing["blessed"]),
            reason=blessing["reason"],
            pushed=bool(push["pushed"]),
            status=(f"pushed version {int(push['version'])}" if push["pushed"] else "not pushed"),
            recall=retrieval[f"recall_at_{k}"],
            popularity_recall=retrieval[f"popularity_recall_at_{k}"],
            auc=outputs["ranking_metrics"]["metadata"]["auc"],
            warm_start={
                name: _int_or_none(
                    outputs[f"{name}_training"]["metadata"].get("warm_start_version")
                )
                for name in MODELS
            },
        )
    run_dir = newest_run_dir(os.path.join(workdir, "pipeline_root"))
    outcome["drift"] = drift_scores(
        os.path.join(run_dir, "validate", "anomalies", "drift.anomalies.pbtxt")
    )
    served = root_.served_versions(os.path.join(workdir, "serving"))
    outcome["served_version"] = served.get(RETRIEVAL)
    return outcome


def simulate(
    workdir: str,
    days: int,
    drift_day: int = 0,
    drift: str = "category",
    lookback_days: int = 14,
    eval_days: int = 3,
    users: int = 2000,
    items: int = 400,
    seed: int = 7,
    config: dict | None = None,
) -> dict:
    """Run ``days`` daily retrains; write ``timeline.html``, ``timeline.png`` and
    ``timeline.json`` under ``workdir``; return the timeline."""
    from recsys.app.generate import generate
    from recsys.core.tables import read_raw_table

    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    if drift_day and not 1 <= drift_day <= days:
        raise ValueError(f"--drift-day must be a simulated day, 1..{days}; got {drift_day}")
    workdir = os.path.abspath(workdir)
    data_root = os.path.join(workdir, "data")
    # Day i's span (its newest day) is data day lookback + i - 1: drift starts there.
    log(
        "simulate",
        f"generating {lookback_days + days} days of synthetic data into {data_root}"
        + (f", {drift} drift from simulated day {drift_day} on" if drift_day else ""),
    )
    generate(
        data_root,
        users=users,
        items=items,
        days=lookback_days + days,
        seed=seed,
        start=START,
        drift=drift if drift_day else "",
        drift_day=lookback_days + drift_day - 1 if drift_day else 0,
    )
    events = read_raw_table(data_root, "impressions")["event_ts"]
    base = {
        **(config or {}),
        "lookback_days": lookback_days,
        "eval_days": eval_days,
        "warm_start": True,
    }
    timeline = []
    # One fork server for every day's run: the libraries are imported once.
    with fork_server.running(log=lambda line: log("simulate", line)):
        for day in range(1, days + 1):
            as_of = pd.Timestamp(START, tz="UTC") + pd.Timedelta(days=lookback_days + day)
            log("simulate", f"day {day}/{days}: as_of {as_of:%Y-%m-%d}")
            outcome = day_outcome(day, as_of, workdir, data_root, base, events)
            drift_note = (
                "drift not checked"
                if outcome["drift"] is None
                else f"drift flagged on {outcome['drift']['flagged']}"
                if outcome["drift"]["flagged"]
                else "no drift"
            )
            log(
                "simulate",
                f"day {day}/{days}: {outcome['status']}; {drift_note}; serving version "
                f"{outcome['served_version']}",
            )
            timeline.append(outcome)
    result = {
        "days": timeline,
        "drift_day": drift_day,
        "drift": drift if drift_day else "",
        "workdir": workdir,
    }
    with open(os.path.join(workdir, "timeline.json"), "w") as handle:
        json.dump(result, handle, indent=2, default=str)
    png = timeline_png(timeline, drift_day)
    with open(os.path.join(workdir, "timeline.png"), "wb") as handle:
        handle.write(png)
    with open(os.path.join(workdir, "timeline.html"), "w") as handle:
        handle.write(timeline_html(result, png))
    return result


def timeline_png(timeline: list[dict], drift_day: int) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [d["day"] for d in timeline]
    figure, axes = plt.subplots(4, 1, figsize=(7, 8.5), sharex=True)
    axes[0].bar(days, [d["span_events"] for d in timeline], color="#7a9cc6")
    axes[0].set_ylabel("impressions\nin the span")
    ratios = [d["drift"]["max_ratio"] if d["drift"] else float("nan") for d in timeline]
    flagged = [bool(d["drift"] and d["drift"]["flagged"]) for d in timeline]
    axes[1].plot(days, ratios, marker="o", color="#555")
    axes[1].scatter(
        [d for d, f in zip(days, flagged, strict=True) if f],
        [r for r, f in zip(ratios, flagged, strict=True) if f],
        color="#b3261e",
        zorder=3,
        s=60,
        label="drift flagged",
    )
    axes[1].axhline(1.0, linestyle="--", color="grey", label="threshold")
    axes[1].set_ylabel("max drift /\nthreshold")
    axes[1].legend(loc="upper left", fontsize=8)
    for key, label in (
        ("recall", "two-tower Recall@K"),
        ("popularity_recall", "popularity"),
        ("auc", "ranking AUC"),
    ):
        axes[2].plot(days, [d.get(key, float("nan")) for d in timeline], marker="o", label=label)
    axes[2].set_ylabel("metrics")
    axes[2].legend(loc="lower left", fontsize=8)
    served = [
        d["served_version"] if d["served_version"] is not None else float("nan") for d in timeline
    ]
    axes[3].step(days, served, where="post", color="#1b7f3b")
    for d, version in zip(timeline, served, strict=True):
        colour = "#1b7f3b" if d["pushed"] else "#b3261e"
        axes[3].scatter(
            [d["day"]],
            [version if version == version else 0],
            color=colour,
            marker="o" if d["pushed"] else "x",
            s=60,
            zorder=3,
        )
    axes[3].set_ylabel("served\nversion")
    axes[3].set_xlabel("simulated day (o pushed, x not pushed)")
    axes[3].set_xticks(days)
    if drift_day:
        for axis in axes:
            axis.axvline(drift_day - 0.5, color="#b3261e", alpha=0.3, linewidth=6)
    figure.suptitle(
        "Daily retraining timeline" + (f" (drift from day {drift_day})" if drift_day else "")
    )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def timeline_html(result: dict, png: bytes) -> str:
    def cell(value):
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4f}"
        return html.escape(str(value))

    rows = []
    for d in result["days"]:
        drift = d["drift"]
        drift_text = (
            "not checked (no baseline yet, or the run stopped before validate)"
            if drift is None
            else f"flagged: {', '.join(drift['flagged'])}"
            if drift["flagged"]
            else f"max {drift['max_ratio']:.2f} x threshold ({drift['worst_feature']})"
        )
        warm = d.get("warm_start") or {}
        warm_text = ", ".join(f"{k} from v{v}" for k, v in warm.items() if v) or "cold"
        css = "ok" if d["pushed"] else "no"
        rows.append(
            f'<tr class="{css}"><td>{d["day"]}</td><td>{d["as_of"]}</td>'
            f"<td>{d['span_events']}</td><td>{cell(drift_text)}</td>"
            f"<td>{cell(d.get('recall'))}</td><td>{cell(d.get('auc'))}</td>"
            f"<td>{cell(warm_text if 'warm_start' in d else '')}</td>"
            f"<td>{cell(d['status'])}</td><td>{cell(d['served_version'])}</td>"
            f'<td class="reason">{cell(d["reason"])}</td></tr>'
        )
    image = base64.b64encode(png).decode()
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>recsys daily retraining timeline</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1200px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }}
tr.no td {{ background: #fde7e9; }}
td.reason {{ font-size: 0.85em; max-width: 40em; }}
</style></head><body>
<h1>Daily retraining timeline</h1>
<p>{len(result["days"])} simulated daily runs in {html.escape(result["workdir"])}
{
        f"; {html.escape(result['drift'])} drift injected from day {result['drift_day']}"
        if result["drift_day"]
        else ""
    }. Each day trains on the window ending at its as_of,
warm-starts from the last blessed model, checks drift against the last span that passed
validation and compares its candidate with the version serving at the time.</p>
<table><tr><th>day</th><th>as_of</th><th>span impressions</th><th>drift</th>
<th>Recall@K</th><th>AUC</th><th>warm start</th><th>outcome</th><th>serving version after</th>
<th>gate decision / reason</th></tr>
{"".join(rows)}</table>
<img alt="timeline" src="data:image/png;base64,{image}">
</body></html>
"""
