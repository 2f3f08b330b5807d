"""Data validation report: one self-contained HTML file with the anomalies, the
skew and drift measurements, and a plot per feature with the compared datasets
overlaid (train / eval / this span / previous span / serving log). TFDV's own Facets view loads
its code from the internet; this renders offline (and in the Kubeflow UI)."""

import html

import numpy as np

STANDARD_HISTOGRAM = 0  # tensorflow_metadata Histogram.HistogramType.STANDARD
TOP_VALUES = 12
MAX_PLOTTED_CATEGORIES = 50  # above this a string feature is an id: say so, don't plot

# One small chart per feature and table (about 40 on the sample), drawn as inline SVG
# here rather than with matplotlib: matplotlib took about 0.2 s a chart, mostly laying
# out text, three quarters of validate's time on small data (every run, every test);
# these two kinds of chart (overlaid step histograms, grouped bars) are a few paths.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")  # tab10
WIDTH, HEIGHT, TOP, RIGHT, BOTTOM = 360, 290, 24, 12, 70


def _text(x, y, text, size=9, anchor="middle", extra="") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}"{extra}>'
        f"{html.escape(str(text))}</text>"
    )


def _svg(name: str, left: int, body: list[str], labels: list[str], x_caption: str) -> str:
    """The frame every chart shares: title, axes, the x caption and a legend below."""
    bottom = HEIGHT - BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" role="img">',
        f"<title>{html.escape(name)}</title>",
        _text(WIDTH / 2, 15, name, 11),
        *body,
        f'<path d="M{left},{TOP} V{bottom} H{WIDTH - RIGHT}" stroke="#333" fill="none"/>',
        _text((left + WIDTH - RIGHT) / 2, bottom + 28, x_caption, 8),
    ]
    for i, label in enumerate(labels):
        x, y = 20 + (i % 3) * 115, bottom + 44 + (i // 3) * 13
        parts.append(f'<rect x="{x}" y="{y - 8}" width="9" height="9" fill="{COLORS[i]}"/>')
        parts.append(_text(x + 13, y, label, 8, "start"))
    return "".join(parts) + "</svg>"


def _histograms(name: str, series: dict) -> str:
    """Each dataset's share of rows per bucket, as steps over the buckets' edges."""
    left, bottom = 46, HEIGHT - BOTTOM
    low = min(edges[0] for edges, _ in series.values())
    high = max(edges[-1] for edges, _ in series.values())
    high = high if high > low else low + 1
    top_share = max(float(shares.max()) for _, shares in series.values()) or 1.0

    def x(value):
        return left + (value - low) / (high - low) * (WIDTH - RIGHT - left)

    def y(share):
        return bottom - share / top_share * (bottom - TOP)

    body = []
    for color, (edges, shares) in zip(COLORS, series.values(), strict=False):
        steps = "".join(
            f" V{y(share):.1f} H{x(edges[i + 1]):.1f}" for i, share in enumerate(shares)
        )
        body.append(
            f'<path d="M{x(edges[0]):.1f},{bottom}{steps} V{bottom}" stroke="{color}" '
            f'fill="none" stroke-width="1.5"/>'
        )
    for value, anchor in ((low, "start"), ((low + high) / 2, "middle"), (high, "end")):
        body.append(_text(x(value), bottom + 12, f"{value:.4g}", 8, anchor))
    for share in (0, top_share / 2, top_share):
        body.append(_text(left - 4, y(share) + 3, f"{share:.2g}", 8, "end"))
    body.append(
        _text(12, (TOP + bottom) / 2, "share of rows", 8, extra=_rotated(12, (TOP + bottom) / 2))
    )
    return _svg(name, left, body, list(series), "value")


def _rotated(x, y) -> str:
    return f' transform="rotate(-90 {x:.1f} {y:.1f})"'


def _bars(name: str, categories: list[str], series: dict) -> str:
    """Each dataset's share of rows per category, grouped per category, the most
    frequent on top."""
    left, bottom = 110, HEIGHT - BOTTOM
    top_share = max((max(shares) for shares in series.values()), default=0) or 1.0
    row = (bottom - TOP) / max(len(categories), 1)
    bar = row * 0.8 / len(series)
    width = WIDTH - RIGHT - left
    body = []
    for j, category in enumerate(reversed(categories)):
        top = TOP + j * row + row * 0.1
        body.append(_text(left - 4, top + row * 0.4 + 3, category[:22], 7, "end"))
        for p, (color, shares) in enumerate(zip(COLORS, series.values(), strict=False)):
            share = shares[len(categories) - 1 - j]
            body.append(
                f'<rect x="{left}" y="{top + p * bar:.1f}" width="{share / top_share * width:.1f}" '
                f'height="{bar:.1f}" fill="{color}"/>'
            )
    for share, anchor in ((0, "middle"), (top_share / 2, "middle"), (top_share, "end")):
        body.append(_text(left + share / top_share * width, bottom + 12, f"{share:.2g}", 8, anchor))
    return _svg(name, left, body, list(series), "share of rows")


def _features(statistics) -> dict:
    dataset = statistics.datasets[0]
    return {feature.path.step[0]: feature for feature in dataset.features}


def _plot_feature(name: str, by_dataset: dict) -> str | None:
    """An SVG chart of the feature in every dataset it is in, or None when there is
    nothing to draw (no histogram, or an id-like string feature)."""
    # The same categories for every dataset: the most frequent across all of them, so a
    # value that only grew in one (drift, skew) is still plotted.
    frequency_by_value = {}
    for feature in by_dataset.values():
        for value in feature.string_stats.top_values if feature.HasField("string_stats") else []:
            frequency_by_value[value.value] = max(
                frequency_by_value.get(value.value, 0), value.frequency
            )
    categories = sorted(frequency_by_value, key=frequency_by_value.get)[-TOP_VALUES:]
    histograms, bars = {}, {}
    for label, feature in by_dataset.items():
        if feature.HasField("num_stats"):
            histogram = next(
                (h for h in feature.num_stats.histograms if h.type == STANDARD_HISTOGRAM), None
            )
            if histogram is None or not histogram.buckets:
                continue
            edges = np.array(
                [histogram.buckets[0].low_value] + [b.high_value for b in histogram.buckets]
            )
            counts = np.array([b.sample_count for b in histogram.buckets])
            if np.isfinite(edges).all():
                histograms[label] = (edges, counts / max(counts.sum(), 1))
        elif feature.HasField("string_stats"):
            stats = feature.string_stats
            if stats.unique > MAX_PLOTTED_CATEGORIES:
                continue
            total = max(stats.common_stats.num_non_missing, 1)
            frequency = {v.value: v.frequency for v in stats.top_values}
            bars[label] = [frequency.get(value, 0.0) / total for value in categories]
    if histograms:
        return _histograms(name, histograms)
    if bars and categories:
        return _bars(name, categories, bars)
    return None


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
            chart = _plot_feature(feature_name, by_dataset)
            if chart:
                images.append(chart)
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
svg {{ margin: 0.2em; vertical-align: top; }}
</style></head><body>
<h1>Data validation, span {html.escape(span_day)}</h1>
{verdict}
{comparisons}
{"".join(sections)}
</body></html>
"""
