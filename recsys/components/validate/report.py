"""Data validation report: one self-contained HTML file with the anomalies, the
skew and drift measurements, and a plot per feature with the compared datasets
overlaid (train / eval / this span / previous span / serving log). TFDV's own Facets view loads
its code from the internet; this renders offline (and in the Kubeflow UI)."""

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")  # no display on pipeline workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STANDARD_HISTOGRAM = 0  # tensorflow_metadata Histogram.HistogramType.STANDARD
TOP_VALUES = 12
MAX_PLOTTED_CATEGORIES = 50  # above this a string feature is an id: say so, don't plot


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _features(statistics) -> dict:
    dataset = statistics.datasets[0]
    return {feature.path.step[0]: feature for feature in dataset.features}


def _plot_feature(name: str, by_dataset: dict) -> str | None:
    figure, axis = plt.subplots(figsize=(3.6, 2.8))
    plotted = False
    # The same categories for every dataset: the most frequent across all of them, so a
    # value that only grew in one (drift, skew) is still plotted.
    frequency_by_value = {}
    for feature in by_dataset.values():
        for value in feature.string_stats.top_values if feature.HasField("string_stats") else []:
            frequency_by_value[value.value] = max(
                frequency_by_value.get(value.value, 0), value.frequency
            )
    categories = sorted(frequency_by_value, key=frequency_by_value.get)[-TOP_VALUES:]
    bar_height = 0.8 / len(by_dataset)
    for position, (label, feature) in enumerate(by_dataset.items()):
        if feature.HasField("num_stats"):
            histogram = next(
                (h for h in feature.num_stats.histograms if h.type == STANDARD_HISTOGRAM), None
            )
            if histogram is None or not histogram.buckets:
                continue
            edges = [histogram.buckets[0].low_value] + [b.high_value for b in histogram.buckets]
            counts = np.array([b.sample_count for b in histogram.buckets])
            axis.stairs(counts / max(counts.sum(), 1), edges, label=label)
            axis.set_ylabel("share of rows", fontsize=7)
            plotted = True
        elif feature.HasField("string_stats"):
            stats = feature.string_stats
            if stats.unique > MAX_PLOTTED_CATEGORIES:
                continue
            total = max(stats.common_stats.num_non_missing, 1)
            frequency = {v.value: v.frequency for v in stats.top_values}
            shares = [frequency.get(value, 0.0) / total for value in categories]
            axis.barh(
                np.arange(len(categories)) + position * bar_height,
                shares,
                height=bar_height,
                label=label,
            )
            axis.set_yticks(np.arange(len(categories)) + 0.4 - bar_height / 2)
            axis.set_yticklabels(categories, fontsize=7)
            axis.set_xlabel("share of rows", fontsize=7)
            plotted = True
    if not plotted:
        plt.close(figure)
        return None
    axis.set_title(name, fontsize=9)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    return _png(figure)


def _summary_cell(feature) -> str:
    if feature.HasField("num_stats"):
        stats = feature.num_stats
        return (
            f"mean {stats.mean:.4g}, min {stats.min:.4g}, max {stats.max:.4g}, "
            f"missing {stats.common_stats.num_missing}"
        )
    stats = feature.string_stats
    return f"{stats.unique} unique, missing {stats.common_stats.num_missing}"


def _measurement_table(title: str, rows) -> str:
    if not rows:
        return ""
    cells = "".join(
        f"<tr class='{'bad' if value > threshold else ''}'><td>{html.escape(feature)}</td>"
        f"<td>{html.escape(measure)}</td><td>{value:.4f}</td><td>{threshold:.4f}</td></tr>"
        for feature, measure, value, threshold in rows
    )
    return (
        f"<h3>{html.escape(title)}</h3><table><tr><th>feature</th><th>measure</th>"
        f"<th>value</th><th>threshold</th></tr>{cells}</table>"
    )


def render(
    statistics: dict,
    groups: dict[str, list[str]],
    blocking: list,
    warnings: list,
    measurements: dict,
    notes: list[str],
    span_day: str,
) -> str:
    """``groups`` maps a table to the datasets compared in its plots, e.g.
    ``{"impressions": ["train_events", "eval_events"]}``; ``blocking`` and
    ``warnings`` are validate.Anomaly records."""
    sections = []
    for table, datasets in groups.items():
        if not datasets:
            continue
        features = {name: _features(statistics[name]) for name in datasets}
        rows, images = [], []
        for feature_name in features[datasets[0]]:
            by_dataset = {
                name: features[name][feature_name]
                for name in datasets
                if feature_name in features[name]
            }
            cells = "".join(
                f"<td>{html.escape(_summary_cell(features[name][feature_name]))}</td>"
                if feature_name in features[name]
                else "<td>absent</td>"
                for name in datasets
            )
            rows.append(f"<tr><th>{html.escape(feature_name)}</th>{cells}</tr>")
            image = _plot_feature(feature_name, by_dataset)
            if image:
                images.append(
                    f'<img alt="{html.escape(feature_name)}" src="data:image/png;base64,{image}">'
                )
        header = "".join(
            f"<th>{html.escape(name)} ({statistics[name].datasets[0].num_examples} rows)</th>"
            for name in datasets
        )
        sections.append(
            f"<h2>{html.escape(table)}</h2><table><tr><th>feature</th>{header}</tr>"
            f"{''.join(rows)}</table>{''.join(images)}"
        )

    def listing(title, css, anomalies):
        return (
            (
                f"<p class='{css}'>{title}:</p><ul>"
                + "".join(f"<li>{html.escape(a.line().strip(' -'))}</li>" for a in anomalies)
                + "</ul>"
            )
            if anomalies
            else ""
        )

    verdict = (
        listing("Blocking anomalies", "bad", blocking)
        + listing("Warnings (policy: warn)", "warn", warnings)
        or "<p class='good'>No anomalies in the checks that ran.</p>"
    )
    verdict += "".join(f"<p class='note'>Note: {html.escape(note)}</p>" for note in notes)
    comparisons = _measurement_table(
        "Training/serving skew (this span vs serving log)", measurements.get("skew")
    ) + _measurement_table("Drift (this span vs previous span)", measurements.get("drift"))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>recsys data validation</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1200px; }}
.good {{ color: #1b7f3b; font-weight: bold; }} .bad {{ color: #b3261e; font-weight: bold; }}
.warn {{ color: #8a5300; font-weight: bold; }} .note {{ color: #555; }}
tr.bad td {{ background: #fbe9e7; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 90%; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
img {{ margin: 0.2em; vertical-align: top; }}
</style></head><body>
<h1>Data validation, span {html.escape(span_day)}</h1>
{verdict}
{comparisons}
{"".join(sections)}
</body></html>
"""
