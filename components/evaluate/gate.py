"""The release gate: every check a candidate must pass, each with its numbers.

Three kinds of check, all listed in the blessing whether they pass or not:

- **value**: the candidate alone against a fixed threshold (Recall@K, its lift over
  popularity, AUC, normalized entropy, calibration ratio bounds);
- **change**: the candidate against the model serving now (the champion), both
  scored on the same eval data in the same run, overall and per slice; a slice
  with fewer than ``min_slice_size`` positives is listed as skipped, not judged;
- **infra**: infra validation of each SavedModel (loads, signature, warmup
  replay, budgets).

Fail closed: a check whose value is missing or not a finite number fails, and
so does a champion that exists but cannot be scored (unless
``compare_with_champion`` is off, which the blessing then says).
"""

import math
from dataclasses import asdict, dataclass

from recsys.components.evaluate.config import LOOSER_WHEN, Thresholds


@dataclass
class Check:
    kind: str  # value | change | infra
    metric: str
    slice: str
    candidate: float | None
    baseline: float | None  # popularity, the champion, or None
    baseline_name: str  # "popularity", "serving version 3", ""
    threshold: str  # human-readable: ">= 0.55", ">= 0.98 x baseline", "in [0.8, 1.25]"
    passed: bool | None  # None: skipped (see note)
    note: str = ""
    # Half-width of the candidate's 95% interval (None where not computed): how far
    # the value could move on another eval set of the same size.
    margin: float | None = None

    @property
    def status(self) -> str:
        return {True: "pass", False: "FAIL", None: "skipped"}[self.passed]

    def describe(self) -> str:
        if self.kind == "infra":
            return f"{self.metric}: {self.note or self.status}"
        where = f" [{self.slice}]" if self.slice != "all" else ""
        value = with_margin(self.candidate, self.margin)
        against = f" vs {self.baseline_name} {_format(self.baseline)}" if self.baseline_name else ""
        note = f"; {self.note}" if self.note else ""
        return f"{self.metric}{where} {value}{against} (needs {self.threshold}){note}"


def _format(value) -> str:
    if value is None:
        return "missing"
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def with_margin(value, margin) -> str:
    """The value, and its 95% interval's half-width where known: "0.3024 ± 0.0412"."""
    text = _format(value)
    if _finite(value, margin):
        text += f" ± {margin:.4f}"
    return text


def _finite(*values) -> bool:
    return all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )


def within(
    kind,
    metric,
    slice_,
    candidate,
    low=None,
    high=None,
    baseline=None,
    baseline_name="",
    threshold="",
    margin=None,
) -> Check:
    """low <= candidate <= high (None: no bound); a value or bound that is missing or
    not finite (NaN) fails closed. ``margin`` is shown, not judged: the gate decides
    on the value, so a decision does not move with how the interval is computed."""
    known = _finite(candidate, *[bound for bound in (low, high) if bound is not None])
    passed = known and (low is None or candidate >= low) and (high is None or candidate <= high)
    return Check(
        kind,
        metric,
        slice_,
        candidate,
        baseline,
        baseline_name,
        threshold,
        passed,
        "" if known else "a value is missing: fails closed",
        margin,
    )


def at_least(
    kind,
    metric,
    slice_,
    candidate,
    minimum,
    baseline=None,
    baseline_name="",
    threshold="",
    margin=None,
) -> Check:
    return within(
        kind,
        metric,
        slice_,
        candidate,
        minimum,
        None,
        baseline,
        baseline_name,
        threshold or f">= {minimum:g}",
        margin,
    )


def value_checks(retrieval: dict, ranking: dict, thresholds: Thresholds) -> list[Check]:
    k = thresholds.recall_k
    recall, popular = retrieval.get(f"recall_at_{k}"), retrieval.get(f"popularity_recall_at_{k}")
    lift_floor = thresholds.min_recall_lift * popular if _finite(popular) else float("nan")
    low, high = thresholds.min_calibration_ratio, thresholds.max_calibration_ratio
    recall_margin = retrieval.get(f"recall_at_{k}_margin")
    return [
        at_least(
            "value",
            f"retrieval Recall@{k}",
            "all",
            recall,
            lift_floor,
            popular,
            "popularity",
            f">= {thresholds.min_recall_lift:g} x popularity",
            recall_margin,
        ),
        at_least(
            "value",
            f"retrieval Recall@{k}",
            "all",
            recall,
            thresholds.min_recall,
            margin=recall_margin,
        ),
        at_least(
            "value",
            "ranking AUC",
            "all",
            ranking.get("auc"),
            thresholds.min_auc,
            margin=ranking.get("auc_margin"),
        ),
        within(
            "value",
            "ranking normalized entropy",
            "all",
            ranking.get("normalized_entropy"),
            high=thresholds.max_normalized_entropy,
            threshold=f"<= {thresholds.max_normalized_entropy:g}",
            margin=ranking.get("normalized_entropy_margin"),
        ),
        within(
            "value",
            "ranking calibration ratio",
            "all",
            ranking.get("calibration_ratio"),
            low,
            high,
            threshold=f"in [{low:g}, {high:g}]",
            margin=ranking.get("calibration_ratio_margin"),
        ),
    ]


def change_checks(
    candidate: dict,
    champion: dict,
    sizes: dict,
    version: int,
    thresholds: Thresholds,
    margins: dict | None = None,
) -> list[Check]:
    """``candidate`` and ``champion``: {metric: {slice: value}} from the same code on
    the same data; ``sizes``: {metric: {slice: positives}}; ``margins``: the
    candidate's 95% half-widths, {metric: {slice: margin}}."""
    checks = []
    for metric, by_slice in candidate.items():
        for slice_, value in by_slice.items():
            allowed = (
                thresholds.max_regression if slice_ == "all" else thresholds.max_slice_regression
            )
            old = champion.get(metric, {}).get(slice_)
            size = sizes.get(metric, {}).get(slice_, 0)
            name = f"serving version {version}"
            threshold = f">= {1 - allowed:g} x {name}"
            if slice_ != "all" and size < thresholds.min_slice_size:
                checks.append(
                    Check(
                        "change",
                        metric,
                        slice_,
                        value,
                        old,
                        name,
                        threshold,
                        None,
                        f"skipped: {size} positives < min_slice_size {thresholds.min_slice_size}",
                    )
                )
                continue
            floor = (1 - allowed) * old if _finite(old) else float("nan")
            margin = (margins or {}).get(metric, {}).get(slice_)
            checks.append(
                at_least("change", metric, slice_, value, floor, old, name, threshold, margin)
            )
    return checks


def champion_unavailable(note: str, thresholds: Thresholds) -> list[Check]:
    """A champion that exists but could not be scored fails closed."""
    if not thresholds.compare_with_champion:
        return []
    return [
        Check(
            "change",
            "champion comparison",
            "all",
            None,
            None,
            "",
            "a scored champion",
            False,
            f"{note}; to release without the comparison, set compare_with_champion to false",
        )
    ]


def infra_checks(infra: dict) -> list[Check]:
    checks = []
    for name, result in sorted(infra.get("models", {}).items()):
        failed = [c["detail"] for c in result.get("checks", []) if not c["passed"]]
        checks.append(
            Check(
                "infra",
                f"infra validation of {name}",
                "all",
                None,
                None,
                "",
                "every infra check passes",
                bool(result.get("passed")) and not failed,
                "; ".join(failed) if failed else result.get("summary", ""),
            )
        )
    if not checks:
        checks.append(
            Check(
                "infra",
                "infra validation",
                "all",
                None,
                None,
                "",
                "a result for every model",
                False,
                "no infra validation result: fails closed",
            )
        )
    return checks


def relaxed(thresholds: Thresholds) -> list[str]:
    """Each setting looser than its default (``LOOSER_WHEN``), as "name value
    (default d)"."""
    defaults = Thresholds()
    settings = []
    for name, looser in LOOSER_WHEN.items():
        value, default = getattr(thresholds, name), getattr(defaults, name)
        if (value < default) if looser == "lower" else (value > default):
            settings.append(f"{name} {_setting(value)} (default {_setting(default)})")
    return settings


def _setting(value) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


def decide(checks: list[Check], thresholds: Thresholds, champion_note: str) -> dict:
    """The blessing: blessed when no check failed; the reason names the failing checks
    first, then says what the candidate was compared with, and every threshold set
    looser than its default."""
    failed = [c for c in checks if c.passed is False]
    judged = [c for c in checks if c.passed is not None]
    skipped = len(checks) - len(judged)
    if failed:
        reason = f"NOT blessed: {len(failed)} of {len(judged)} checks failed: " + "; ".join(
            c.describe() for c in failed
        )
    else:
        reason = f"blessed: all {len(judged)} checks passed"
    reason += f" ({champion_note}" + (
        f"; {skipped} slice checks skipped as too small)" if skipped else ")"
    )
    loosened = relaxed(thresholds)
    if loosened:
        reason += "; checks relaxed from their defaults: " + ", ".join(loosened)
    ordered = (
        failed + [c for c in checks if c.passed is None] + [c for c in checks if c.passed is True]
    )
    return {
        "blessed": not failed,
        "reason": reason,
        "checks": [{**asdict(c), "status": c.status} for c in ordered],
        "thresholds": asdict(thresholds),
        "relaxed": loosened,
    }


def checks_markdown(blessing: dict) -> str:
    """The checks as a table, failing ones first (the order ``decide`` stored); a
    candidate value ± the half-width of its 95% interval."""
    rows = [
        "| status | kind | metric | slice | candidate | baseline | threshold | note |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    for c in blessing["checks"]:
        baseline = f"{_format(c['baseline'])} ({c['baseline_name']})" if c["baseline_name"] else ""
        candidate = with_margin(c["candidate"], c.get("margin")) if c["kind"] != "infra" else ""
        rows.append(
            f"| {c['status']} | {c['kind']} | {c['metric']} | {c['slice']} | "
            f"{candidate} | {baseline} | {c['threshold']} | {c['note']} |"
        )
    return "\n".join(rows)
