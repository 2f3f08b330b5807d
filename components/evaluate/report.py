"""The evaluation report: one self-contained HTML file (plots inlined as PNG, so it
renders offline, in the Kubeflow UI and from a file share alike), the Markdown
summary the run prints, and the reliability diagram as its own PNG."""

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")  # no display on pipeline workers
import matplotlib.pyplot as plt  # noqa: E402

from recsys.components.evaluate import gate  # noqa: E402
from recsys.components.evaluate.funnel import FunnelEvaluation  # noqa: E402
from recsys.components.evaluate.metrics import CalibrationCurve, RocCurve  # noqa: E402
from recsys.components.evaluate.ranking import RankingEvaluation  # noqa: E402
from recsys.components.evaluate.retrieval import USER_SLICES, RecallCurve, RetrievalEvaluation  # noqa: E402
from recsys.core.contracts import CANDIDATE_SOURCES  # noqa: E402


def _png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _png(figure) -> str:
    return base64.b64encode(_png_bytes(figure)).decode()


def _recall_plot(curve: RecallCurve) -> str:
    figure, axis = plt.subplots(figsize=(5, 3.4))
    axis.plot(curve.k, curve.candidates, marker="D", label="merged candidates")
    axis.plot(curve.k, curve.two_tower, marker="o", label="two-tower")
    axis.plot(curve.k, curve.popularity, marker="s", label="popularity")
    axis.set_xscale("log")
    axis.set_xlabel("K (log scale)")
    axis.set_ylabel("Recall@K")
    axis.set_title("Retrieval, full catalog, training items masked")
    axis.grid(alpha=0.3)
    axis.legend()
    return _png(figure)


def _roc_plot(roc: RocCurve) -> str:
    figure, axis = plt.subplots(figsize=(3.6, 3.4))
    axis.plot(roc.false_positive_rate, roc.true_positive_rate, label="ranking model")
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title("Ranking ROC")
    axis.legend(loc="lower right")
    return _png(figure)


def _reliability_figure(calibration: CalibrationCurve):
    figure, axis = plt.subplots(figsize=(3.6, 3.4))
    top = max(max(calibration.predicted, default=0), max(calibration.observed, default=0))
    top = min(1.0, top * 1.1) or 1.0
    axis.plot([0, top], [0, top], linestyle="--", color="grey", label="perfect")
    axis.plot(calibration.predicted, calibration.observed, marker="o", label="model")
    axis.set_xlim(0, top)
    axis.set_ylim(0, top)
    axis.set_xlabel("mean predicted click probability")
    axis.set_ylabel("observed click rate")
    axis.set_title(f"Reliability ({len(calibration.predicted)} equal-count bins)")
    axis.legend(loc="upper left")
    return figure


def reliability_png(calibration: CalibrationCurve) -> bytes:
    """The reliability diagram as PNG bytes (its own pipeline artifact too)."""
    return _png_bytes(_reliability_figure(calibration))


def _checks_table(checks: list[dict]) -> str:
    def value(v):
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))

    rows = "".join(
        f'<tr class="{c["status"].lower()}"><td>{html.escape(c["status"])}</td>'
        f"<td>{html.escape(c['kind'])}</td><td>{html.escape(c['metric'])}</td>"
        f"<td>{html.escape(c['slice'])}</td>"
        f"<td>{html.escape(gate.with_margin(c['candidate'], c.get('margin')))}</td>"
        f"<td>{value(c['baseline'])} {html.escape(c['baseline_name'])}</td>"
        f"<td>{html.escape(c['threshold'])}</td><td>{html.escape(c['note'])}</td></tr>"
        for c in checks
    )
    return (
        "<table><tr><th>status</th><th>kind</th><th>metric</th><th>slice</th>"
        "<th>candidate</th><th>baseline</th><th>threshold</th><th>note</th></tr>"
        f"{rows}</table>"
    )


def funnel_metric_names(k: int) -> list[tuple[str, str]]:
    """(metric key, title) of the funnel table, for pages of k items."""
    return [
        ("ndcg_at_10", "NDCG@10"),
        (f"recall_at_{k}", f"Recall@{k}"),
        ("intra_list_diversity", "intra-list diversity"),
        ("catalog_coverage", "catalog coverage"),
        ("exposure_gini", "exposure Gini"),
        ("mean_page_length", "page length"),
    ]


def sources_sentence(retrieval: RetrievalEvaluation, k: int) -> str:
    """Which candidate sources were merged, and each one's share of the top k."""
    if len(retrieval.sources) < 2:
        return "Candidates: the two-tower's alone."
    shares = ", ".join(
        f"{name.replace('_', ' ')} {share:.0%}" for name, share in retrieval.source_share.items()
    )
    return (
        f"Candidates: {', '.join(s.replace('_', ' ') for s in retrieval.sources)}, merged by "
        f"reciprocal rank fusion; of the merged top {k}: {shares} (the source that ranked "
        "each item highest)."
    )


def variant_table(funnel: FunnelEvaluation) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the per-variant table: the logged-click page metrics, the
    truth per request (synthetic data) and each off-policy estimate with its 95%
    half-width (logged propensities)."""
    variants = funnel.variants
    columns = [
        ("NDCG@10 (logged clicks)", lambda v: f"{v.pages.ndcg_at_10:.4f}"),
        (f"Recall@{funnel.k} (logged clicks)", lambda v: f"{v.pages.recall:.4f}"),
        (
            "items from "
            + " / ".join(s.replace("_", " ") for s in CANDIDATE_SOURCES)
            + " (of the clicked ones)",
            lambda v: " / ".join(
                f"{v.source_share[s]:.0%} ({v.source_hit_share[s]:.0%})" for s in CANDIDATE_SOURCES
            ),
        ),
    ]
    rewards = [("value", "value", 3), ("clicks", "clicks", 3), ("watch_seconds", "watch s", 0)]
    if any(v.true_value for v in variants.values()):
        columns += [
            (f"true {title}", lambda v, r=reward, d=digits: f"{v.true_value[r]:.{d}f}")
            for reward, title, digits in rewards
        ]
    if any(v.estimates for v in variants.values()):
        columns += [
            (
                f"{estimator.upper()} {title}",
                lambda v, r=reward, e=estimator, d=digits: (
                    f"{v.estimates[r][e].value:.{d}f} ± {v.estimates[r][e].margin:.{d}f}"
                ),
            )
            for reward, title, digits in rewards
            for estimator in ("ips", "snips", "dr")
        ]
    header = ["variant", *(title for title, _ in columns)]
    rows = [
        [name.replace("_", " "), *(cell(variant) for _, cell in columns)]
        for name, variant in variants.items()
    ]
    return header, rows


def variant_note(funnel: FunnelEvaluation) -> str:
    """What the variant table's value columns mean, or why some are absent."""
    parts = [
        f"Values are per request, over the {funnel.logged_requests} logged eval requests, "
        f"of a page of up to {funnel.k} items: expected clicks, watch seconds and value "
        "(clicks + score_watch_weight x watched minutes: what the ranker's score estimates)."
    ]
    if not any(v.true_value for v in funnel.variants.values()):
        parts.append("No ground truth: the data root has no synthetic world.")
    if funnel.off_policy_note:
        parts.append(f"No off-policy estimates: {funnel.off_policy_note}.")
    return " ".join(parts)


def _caveats_html(caveats: list[str]) -> str:
    if not caveats:
        return ""
    items = "".join(f"<li>{html.escape(caveat)}</li>" for caveat in caveats)
    return f'<h2>Caveats</h2><ul class="caveats">{items}</ul>'


def render(
    retrieval: RetrievalEvaluation,
    ranking: RankingEvaluation,
    funnel: FunnelEvaluation,
    blessing: dict,
) -> str:
    metrics = retrieval.metrics()
    funnel_metrics = funnel.metrics()
    verdict = "blessed" if blessing["blessed"] else "not blessed"
    colour = "#1b7f3b" if blessing["blessed"] else "#b3261e"
    curve = retrieval.curve
    rows = "".join(
        f"<tr><td>Recall@{k}</td><td>{m:.4f}</td><td>{t:.4f}</td><td>{p:.4f}</td></tr>"
        for k, m, t, p in zip(
            curve.k, curve.candidates, curve.two_tower, curve.popularity, strict=True
        )
    )
    rows += (
        f"<tr><td>NDCG@10</td><td>{metrics['ndcg_at_10']:.4f}</td>"
        f"<td>{metrics['two_tower_ndcg_at_10']:.4f}</td>"
        f"<td>{metrics['popularity_ndcg_at_10']:.4f}</td></tr>"
    )
    k = blessing["thresholds"]["recall_k"]
    slice_rows = "".join(
        f"<tr><td>{name.replace('_', ' ')}</td><td>{metrics[f'{name}_users']}</td>"
        + "".join(
            f"<td>{metrics[f'{name}_{metric}']:.4f}</td>"
            f"<td>{metrics[f'{name}_popularity_{metric}']:.4f}</td>"
            for metric in (f"recall_at_{k}", "ndcg_at_10")
        )
        + "</tr>"
        for name in USER_SLICES
    )
    images = [
        _recall_plot(curve),
        _roc_plot(ranking.roc),
        _png(_reliability_figure(ranking.calibration)),
    ]
    funnel_rows = "".join(
        f"<tr><td>{title}</td><td>{funnel_metrics[f'funnel_{name}']:.4f}</td>"
        f"<td>{funnel_metrics[f'retrieval_order_{name}']:.4f}</td></tr>"
        for name, title in funnel_metric_names(funnel.k)
    )
    header, variant_rows = variant_table(funnel)
    variants_html = "<tr>{}</tr>{}".format(
        "".join(f"<th>{html.escape(title)}</th>" for title in header),
        "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in variant_rows
        ),
    )
    figures = "".join(f'<img alt="plot" src="data:image/png;base64,{image}">' for image in images)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>recsys evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1100px; }}
.verdict {{ color: {colour}; font-weight: bold; }}
tr.fail td {{ background: #fde7e9; }}
tr.skipped td {{ color: #777; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
img {{ margin: 0.3em; vertical-align: top; }}
</style></head><body>
<h1>Evaluation</h1>
<p class="verdict">{html.escape(verdict)}</p>
<p>{html.escape(blessing["reason"])}</p>
{_caveats_html(blessing.get("caveats", []))}
<h2>Checks (failing first)</h2>
{_checks_table(blessing["checks"])}
<h2>Retrieval</h2>
<p>{retrieval.eval_users} eval users, {retrieval.catalog_items} catalog items;
each user's training clicks are masked; positives are eval-window clicks on items
new to the user. {html.escape(sources_sentence(retrieval, k))}</p>
<table><tr><th></th><th>merged candidates</th><th>two-tower alone</th><th>popularity</th></tr>
{rows}</table>
<p>Catalog coverage of the merged candidates' top 10: {retrieval.catalog_coverage[10]:.1%},
top 100: {retrieval.catalog_coverage[100]:.1%}.</p>
<table><tr><th>slice</th><th>users</th><th>Recall@{k} merged</th><th>popularity</th>
<th>NDCG@10 merged</th><th>popularity</th></tr>{slice_rows}</table>
<h2>Ranking</h2>
<p>{ranking.eval_examples} eval impressions: AUC {ranking.auc:.4f},
normalized entropy {ranking.normalized_entropy:.4f} (log loss {ranking.logloss:.4f},
constant-CTR prior {ranking.prior_logloss:.4f}), mean predicted CTR
{ranking.mean_predicted_ctr:.4f} vs observed {ranking.eval_ctr:.4f} (calibration ratio
{ranking.calibration_ratio:.3f}, expected calibration error
{ranking.expected_calibration_error:.4f}).</p>
<h2>Funnel</h2>
<p>As served: retrieval top {funnel.candidates_per_user}, ranking, re-ranking to
{funnel.k}, for each eval user's first request, with item features from the start
of the eval split; against the retrieval order of the same candidates.</p>
<table><tr><th></th><th>funnel</th><th>retrieval order</th></tr>{funnel_rows}</table>
<h3>What each stage adds</h3>
<p>Popularity, retrieval's candidates in its own order, the same in the ranker's order,
and the funnel as served. {html.escape(variant_note(funnel))}</p>
<table>{variants_html}</table>
<p>On the eval impressions (the ranker's task) the two-tower score has AUC
{funnel.retrieval_score_impression_auc:.4f}, the ranker {ranking.auc:.4f}. Clicks in a
log are clicks on what the logging policy showed, so pages that reproduce that policy score
higher on them.</p>
{figures}
</body></html>
"""


def markdown(
    retrieval: RetrievalEvaluation,
    ranking: RankingEvaluation,
    funnel: FunnelEvaluation,
    blessing: dict,
) -> str:
    """The summary ``recsys run`` prints and the Kubeflow UI shows."""
    metrics = retrieval.metrics()
    funnel_metrics = funnel.metrics()
    names = [f"recall_at_{k}" for k in sorted(retrieval.ks)] + ["ndcg_at_10"]
    label = {
        name: name.replace("recall_at_", "Recall@").replace("ndcg_at_", "NDCG@") for name in names
    }
    rows = [
        f"| {label[n]} | {metrics[n]:.4f} | {metrics[f'two_tower_{n}']:.4f} | "
        f"{metrics[f'popularity_{n}']:.4f} |"
        for n in names
    ]
    slice_rows = [
        f"| {name.replace('_', ' ')} | {metrics[f'{name}_users']} | "
        + " | ".join(
            f"{metrics[f'{name}_{n}']:.4f} / {metrics[f'{name}_popularity_{n}']:.4f}" for n in names
        )
        + " |"
        for name in USER_SLICES
    ]
    k = funnel.k
    funnel_rows = [
        f"| {title} | {funnel_metrics[f'funnel_{name}']:.4f} | "
        f"{funnel_metrics[f'retrieval_order_{name}']:.4f} |"
        for name, title in funnel_metric_names(k)
    ]
    header, variant_rows = variant_table(funnel)
    watch = (
        f" Watch time of clicks: predicted / observed {ranking.watch_time_ratio:.3f}."
        if ranking.watch_time_ratio is not None
        else ""
    )
    return "\n".join(
        [
            "## Evaluation",
            "",
            f"**{blessing['reason']}**",
            "",
            *[f"- caveat: {caveat}" for caveat in blessing.get("caveats", [])],
            *([""] if blessing.get("caveats") else []),
            "Checks, failing first:",
            "",
            gate.checks_markdown(blessing),
            "",
            f"Retrieval over the full catalog ({retrieval.catalog_items} items, "
            f"{retrieval.eval_users} eval users, training items masked; catalog coverage of "
            f"the top 10: {retrieval.catalog_coverage[10]:.1%}). "
            + sources_sentence(retrieval, blessing["thresholds"]["recall_k"]),
            "",
            "| metric | merged candidates | two-tower alone | popularity |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            "Per slice (merged candidates / popularity):",
            "",
            "| slice | users | " + " | ".join(label[n] for n in names) + " |",
            "|---|---:|" + "---:|" * len(names),
            *slice_rows,
            "",
            f"Ranking on {ranking.eval_examples} eval impressions: AUC {ranking.auc:.4f}, "
            f"normalized entropy {ranking.normalized_entropy:.4f} (log loss "
            f"{ranking.logloss:.4f}, constant-CTR prior {ranking.prior_logloss:.4f}), "
            f"calibration ratio {ranking.calibration_ratio:.3f}, ECE "
            f"{ranking.expected_calibration_error:.4f}.{watch}",
            "",
            f"Funnel, as served (retrieval top {funnel.candidates_per_user} -> ranking -> "
            f"re-ranking to {k}), vs the retrieval order of the same candidates:",
            "",
            "| metric | funnel | retrieval order |",
            "|---|---:|---:|",
            *funnel_rows,
            "",
            "What each stage adds: " + variant_note(funnel),
            "",
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(row) + " |" for row in variant_rows),
            "",
            f"On the eval impressions (the ranker's task) the two-tower score has AUC "
            f"{funnel.retrieval_score_impression_auc:.4f}, the ranker {ranking.auc:.4f}. "
            "Clicks in a log are clicks on what the logging policy showed, so pages that "
            "reproduce that policy score higher on them (docs/design.md, 'Funnel').",
            "",
        ]
    )
