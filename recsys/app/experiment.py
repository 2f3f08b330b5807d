"""``recsys experiment report``: what each arm of an A/B test earned, with intervals.

Reads the exposure log (``recsys serve --exposure-log``, or ``recsys simulate
--experiment``): one row per shown item with its request, user, arm and event id,
and the impressions the client logged for those event ids (clicked,
watch_seconds), from a data root or a directory of Parquet files. Per arm: users,
requests, shown items and, per request, clicks, watch seconds and value (clicks +
watch_weight x watched minutes), each with a 95% interval clustered by user (a
user's requests are correlated), and the lift of each over the control arm (the
first) with its interval by the delta method. A sample-ratio check compares users
per arm with the experiment's shares: a mismatch means the split or the logging
is broken, and no lift should be trusted.

Shown items no impression was logged for count as not engaged and are reported:
a client that logs only clicks would otherwise bias every arm alike but silently.
"""

import html
import json

import numpy as np
import pandas as pd
from scipy import stats

from recsys.components.evaluate.metrics import Z_95
from recsys.components.evaluate.offpolicy import Estimate, clustered_ratio
from recsys.core import storage
from recsys.core.contracts import (
    ARM,
    CLICKED,
    EVENT_ID,
    IMPRESSIONS,
    REQUEST_ID,
    USER_ID,
    WATCH_SECONDS,
)
from recsys.core.tables import DataError, find_table, read_dataset, read_raw_table
from recsys.serving.experiment import Experiment

METRICS = ("clicks", "watch_seconds", "value")
# Below this p-value users per arm do not match the shares (Kohavi et al.'s SRM check).
SRM_P_VALUE = 0.001


def read_impressions(path: str) -> pd.DataFrame:
    """A data root's impressions table, or a directory of Parquet files with them."""
    try:
        find_table(path, IMPRESSIONS)
    except DataError:
        return read_dataset(path)
    return read_raw_table(path, IMPRESSIONS)


def lift(treatment: Estimate, control: Estimate) -> Estimate:
    """treatment / control - 1, independent arms, by the delta method."""
    if not control.value:
        return Estimate(float("nan"), float("nan"))
    se_t, se_c = treatment.margin / Z_95, control.margin / Z_95
    variance = (se_t / control.value) ** 2 + (treatment.value * se_c / control.value**2) ** 2
    return Estimate(treatment.value / control.value - 1.0, float(Z_95 * np.sqrt(variance)))


def arm_results(exposures: pd.DataFrame, impressions: pd.DataFrame, watch_weight: float) -> dict:
    """Per arm: counts and per-request estimates (METRICS -> Estimate)."""
    engaged = impressions[[EVENT_ID, CLICKED, WATCH_SECONDS]].drop_duplicates(EVENT_ID)
    shown = exposures.merge(engaged, on=EVENT_ID, how="left", indicator=True)
    unlogged = (shown["_merge"] == "left_only").to_numpy()
    clicks = shown[CLICKED].fillna(0).to_numpy(float)
    watch = shown[WATCH_SECONDS].fillna(0).to_numpy(float)
    shown = shown.assign(
        clicks=clicks, watch_seconds=watch, value=clicks + watch_weight * watch / 60.0
    )
    first = ~shown.duplicated(REQUEST_ID).to_numpy()
    results = {}
    for arm, rows in shown.groupby(ARM, sort=False):
        mine = (shown[ARM] == arm).to_numpy()
        users = rows[USER_ID].to_numpy()
        results[arm] = {
            "users": int(rows[USER_ID].nunique()),
            "requests": int(first[mine].sum()),
            "shown": int(len(rows)),
            "without_impression": int(unlogged[mine].sum()),
            "per_request": {
                metric: clustered_ratio(rows[metric].to_numpy(), first[mine], users)
                for metric in METRICS
            },
        }
    return results


def sample_ratio(results: dict, experiment: Experiment | None) -> dict | None:
    """Chi-square test of users per arm against the configured shares."""
    if experiment is None:
        return None
    arms = [arm for arm in experiment.arms if arm.share > 0]
    observed = np.array([results.get(arm.name, {}).get("users", 0) for arm in arms])
    expected = np.array([arm.share for arm in arms]) * observed.sum()
    p_value = float(stats.chisquare(observed, expected).pvalue) if len(arms) > 1 else 1.0
    return {
        "p_value": p_value,
        "mismatch": p_value < SRM_P_VALUE,
        "observed": dict(zip([a.name for a in arms], observed.tolist(), strict=True)),
    }


def report(
    exposures_dir: str,
    impressions_path: str,
    experiment: Experiment | None = None,
    control: str = "",
    watch_weight: float = 1.0,
) -> dict:
    exposures = read_dataset(exposures_dir)
    if ARM not in exposures or exposures[ARM].eq("").all():
        raise ValueError(
            f"{exposures_dir}: no experiment arm in the exposure log; serve with --experiment"
        )
    exposures = exposures[exposures[ARM] != ""]
    results = arm_results(exposures, read_impressions(impressions_path), watch_weight)
    order = [arm.name for arm in experiment.arms] if experiment else list(results)
    order = [name for name in order if name in results]
    control = control or order[0]
    if control not in results:
        raise ValueError(f"control arm {control!r} has no requests; arms: {order}")
    for name in order:
        results[name]["lift"] = {
            metric: lift(
                results[name]["per_request"][metric], results[control]["per_request"][metric]
            )
            for metric in METRICS
        }
    return {
        "experiment": experiment.name if experiment else "",
        "control": control,
        "arms": {name: results[name] for name in order},
        "sample_ratio": sample_ratio(results, experiment),
        "watch_weight": watch_weight,
    }


def _json(value):
    if isinstance(value, Estimate):
        return {"value": value.value, "margin": value.margin}
    raise TypeError(type(value))


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=_json)


def table(result: dict) -> tuple[list[str], list[list[str]]]:
    header = ["arm", "users", "requests"]
    header += [f"{m.replace('_', ' ')} / request" for m in METRICS]
    header += [f"lift {m.replace('_', ' ')}" for m in METRICS]
    # A simulated experiment also knows the truth: every request's value under each arm.
    simulated = all("true_lift" in arm for arm in result["arms"].values())
    if simulated:
        header += ["true value / request, all users", "true lift value"]
    rows = []
    for name, arm in result["arms"].items():
        cells = [name + (" (control)" if name == result["control"] else ""), str(arm["users"])]
        cells.append(str(arm["requests"]))
        for metric in METRICS:
            e = arm["per_request"][metric]
            cells.append(f"{e.value:.3f} ± {e.margin:.3f}")
        for metric in METRICS:
            e = arm["lift"][metric]
            cells.append("" if name == result["control"] else f"{e.value:+.1%} ± {e.margin:.1%}")
        if simulated:
            cells.append(f"{arm['true_if_served_to_all']['value']:.3f}")
            is_control = name == result["control"]
            cells.append("" if is_control else f"{arm['true_lift']['value']:+.1%}")
        rows.append(cells)
    return header, rows


def markdown(result: dict) -> str:
    header, rows = table(result)
    lines = [
        f"Experiment {result['experiment'] or '(unnamed)'}: per request, 95% intervals "
        "clustered by user; lift against the control.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
    ratio = result["sample_ratio"]
    if ratio:
        verdict = (
            "MISMATCH: users per arm do not follow the shares; do not trust the lifts"
            if ratio["mismatch"]
            else "users per arm follow the shares"
        )
        lines += ["", f"Sample ratio check: p = {ratio['p_value']:.3g}, {verdict}."]
    unlogged = sum(arm["without_impression"] for arm in result["arms"].values())
    if unlogged:
        lines += ["", f"{unlogged} shown items have no logged impression (counted as not engaged)."]
    return "\n".join(lines)


def to_html(result: dict) -> str:
    header, rows = table(result)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    text = html.escape(markdown(result).split("\n\n", 2)[-1] if result["sample_ratio"] else "")
    return (
        '<!doctype html><html><head><meta charset="utf-8"><title>experiment report</title>'
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}</style></head><body>"
        f"<h1>Experiment {html.escape(result['experiment'])}</h1>"
        f"<table><tr>{head}</tr>{body}</table><p>{text}</p></body></html>"
    )


def write(result: dict, out_dir: str) -> None:
    storage.write_text(storage.join(out_dir, "experiment.json"), to_json(result))
    storage.write_text(storage.join(out_dir, "experiment.html"), to_html(result))
