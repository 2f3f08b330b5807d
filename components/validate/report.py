"""Data validation report: one self-contained HTML file with a plot per feature,
train and eval overlaid, and the anomalies found. TFDV's own Facets view loads
its code from the internet; this renders offline (and in the Kubeflow UI)."""

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")  # no display on pipeline workers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STANDARD_HISTOGRAM = 0  # tensorflow_metadata Histogram.HistogramType.STANDARD
TOP_VALUES = 8
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
    figure, axis = plt.subplots(figsize=(3.4, 2.3))
    plotted = False
    for label, feature in by_dataset.items():
        if feature.HasField("num_stats"):
            histogram = next((h for h in feature.num_stats.histograms
                              if h.type == STANDARD_HISTOGRAM), None)
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
            total = max(feature.string_stats.common_stats.num_non_missing, 1)
            values = [v.value for v in stats.top_values[:TOP_VALUES]]
            shares = [v.frequency / total for v in stats.top_values[:TOP_VALUES]]
            offset = 0.4 * list(by_dataset).index(label)
            axis.barh(np.arange(len(values)) + offset, shares, height=0.4, label=label)
            axis.set_yticks(np.arange(len(values)))
            axis.set_yticklabels(values, fontsize=7)
            axis.set_xlabel("share of rows", fontsize=7)
            plotted = True
    if not plotted:
        plt.close(figure)
        return None
    axis.set_title(name, fontsize=9)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=7)
    return _png(figure)


def _summary_cell(feature) -> str:
    if feature.HasField("num_stats"):
        stats = feature.num_stats
        return (f"mean {stats.mean:.4g}, min {stats.min:.4g}, max {stats.max:.4g}, "
                f"missing {stats.common_stats.num_missing}")
    stats = feature.string_stats
    return f"{stats.unique} unique, missing {stats.common_stats.num_missing}"


def render(statistics: dict, groups: dict[str, list[str]], problems: list[str]) -> str:
    """``groups`` maps a table to the datasets compared in its plots, e.g.
    ``{"impressions": ["train_events", "eval_events"]}``."""
    sections = []
    for table, datasets in groups.items():
        features = {name: _features(statistics[name]) for name in datasets}
        rows, images = [], []
        for feature_name in features[datasets[0]]:
            by_dataset = {name: features[name][feature_name] for name in datasets
                          if feature_name in features[name]}
            cells = "".join(f"<td>{html.escape(_summary_cell(f))}</td>" for f in by_dataset.values())
            rows.append(f"<tr><th>{html.escape(feature_name)}</th>{cells}</tr>")
            image = _plot_feature(feature_name, by_dataset)
            if image:
                images.append(f'<img alt="{html.escape(feature_name)}" '
                              f'src="data:image/png;base64,{image}">')
        header = "".join(f"<th>{html.escape(name)} "
                         f"({statistics[name].datasets[0].num_examples} rows)</th>"
                         for name in datasets)
        sections.append(f"<h2>{html.escape(table)}</h2><table><tr><th>feature</th>{header}</tr>"
                        f"{''.join(rows)}</table>{''.join(images)}")
    verdict = ("<p class='bad'>Blocking anomalies:</p><ul>"
               + "".join(f"<li>{html.escape(p.strip(' -'))}</li>" for p in problems) + "</ul>"
               if problems else "<p class='good'>No anomalies against the curated schemas.</p>")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>recsys data validation</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; max-width: 1200px; }}
.good {{ color: #1b7f3b; font-weight: bold; }} .bad {{ color: #b3261e; font-weight: bold; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 90%; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }}
img {{ margin: 0.2em; vertical-align: top; }}
</style></head><body>
<h1>Data validation</h1>
{verdict}
{''.join(sections)}
</body></html>
"""
