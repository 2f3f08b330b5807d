"""Validate: TFDV statistics (Beam) for every ingested table, checked against the
curated schemas in ``schemas/``. Blocking anomalies stop the run."""

import os
import shutil

import apache_beam as beam
import tensorflow_data_validation as tfdv
from google.protobuf import text_format

import schemas
from components.validate import report
from recsys.beam_io import ReadDataset, pipeline_options, to_list_batch
from recsys.tables import DataError

# Which curated schema each ingested dataset is checked against.
SCHEMA_OF_DATASET = {
    "train_events": "impressions",
    "eval_events": "impressions",
    "users": "users",
    "items": "items",
    "user_features": "user_features",
    "item_features": "item_features",
}


class ValidationFailed(DataError):
    """Blocking anomalies were found; the message lists them and what to do."""


def compute_statistics(datasets: dict[str, str], stats_dir: str, beam_pipeline_args: str) -> dict:
    """One Beam pipeline computing TFDV statistics for each dataset directory."""
    os.makedirs(stats_dir, exist_ok=True)
    paths = {name: os.path.join(stats_dir, f"{name}.stats.pb") for name in datasets}
    with beam.Pipeline(options=pipeline_options(beam_pipeline_args)) as pipeline:
        for name, directory in datasets.items():
            _ = (pipeline
                 | f"Read[{name}]" >> ReadDataset(directory)
                 | f"ToLists[{name}]" >> beam.Map(to_list_batch)
                 | f"Stats[{name}]" >> tfdv.GenerateStatistics()
                 | f"Write[{name}]" >> tfdv.WriteStatisticsToBinaryFile(paths[name]))
    return {name: tfdv.load_stats_binary(path) for name, path in paths.items()}


def describe_anomalies(dataset: str, schema_path: str, anomalies) -> list[str]:
    lines = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        lines.append(f"  - {dataset}: feature '{feature}': {info.short_description} "
                     f"({info.description})")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        lines.append(f"  - {dataset}: dataset: {info.short_description} ({info.description})")
    return lines


def validate(datasets: dict[str, str], schema_dir: str, stats_dir: str, anomalies_dir: str,
             beam_pipeline_args: str = "[]", report_path: str | None = None) -> dict:
    """Compute statistics, validate each dataset, write anomalies and (if asked) the
    HTML report; then raise if any anomaly blocks.

    Returns per-dataset row and anomaly counts plus the Markdown summary.
    """
    schema_dir = schema_dir or schemas.SCHEMA_DIR
    schema_paths = {name: schemas.schema_path(SCHEMA_OF_DATASET[name], schema_dir)
                    for name in datasets}
    loaded = {path: tfdv.load_schema_text(path) for path in set(schema_paths.values())}
    statistics = compute_statistics(datasets, stats_dir, beam_pipeline_args)

    os.makedirs(anomalies_dir, exist_ok=True)
    problems, summary = [], {}
    table = ["| dataset | rows | schema | anomalies |", "|---|---:|---|---:|"]
    for name, stats in statistics.items():
        anomalies = tfdv.validate_statistics(stats, loaded[schema_paths[name]])
        with open(os.path.join(anomalies_dir, f"{name}.anomalies.pbtxt"), "w") as handle:
            handle.write(text_format.MessageToString(anomalies))
        rows = stats.datasets[0].num_examples
        count = len(anomalies.anomaly_info) + int(anomalies.HasField("dataset_anomaly_info"))
        summary[name] = {"rows": rows, "anomalies": count}
        table.append(f"| {name} | {rows} | {os.path.basename(schema_paths[name])} | {count} |")
        problems += describe_anomalies(name, schema_paths[name], anomalies)

    markdown = "## Data validation\n\n" + "\n".join(table) + "\n"
    if problems:
        markdown += "\n**Blocking anomalies**\n\n" + "\n".join(problems) + "\n"
    summary["markdown"] = markdown
    if report_path:
        groups = {}
        for name in statistics:
            groups.setdefault(SCHEMA_OF_DATASET[name], []).append(name)
        with open(report_path, "w") as handle:
            handle.write(report.render(statistics, groups, problems))
    if problems:
        raise ValidationFailed(
            f"validate: {len(problems)} blocking anomal{'y' if len(problems) == 1 else 'ies'}:\n"
            + "\n".join(problems)
            + f"\nWhat to do: fix the upstream data so it matches the schema; if the change is "
            f"intended, update the schema in {schema_dir} and review the diff. "
            f"Full anomaly reports: {anomalies_dir}"
        )
    return summary


def export_schemas(schema_dir: str, destination: str) -> None:
    """Copy the schemas this run validated against, so later stages use the same ones."""
    shutil.copytree(schema_dir or schemas.SCHEMA_DIR, destination, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
