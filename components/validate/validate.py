"""Validate: TFDV statistics (Beam) of everything the run will use, checked three ways.

- schema: every ingested table and the joined examples against the curated
  schemas in ``schemas/`` (the serving log in the schema's SERVING environment);
- skew: the run's span of examples (its newest day, as the features stage
  computed them) against the serving log of the same day (what serving fed the
  models), with the schema's ``skew_comparator`` thresholds;
- drift: the span against the previous span's statistics, with the schema's
  ``drift_comparator`` and ``num_examples_drift_comparator`` thresholds.

TFX's ExampleValidator leaves the comparators out and never stops a run; here
each anomaly gets a policy (block or warn; block by default) and a blocking one
stops the run after the report and anomaly files are written.
"""

import datetime
import json
from dataclasses import asdict, dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow_data_validation as tfdv
from google.protobuf import text_format
from tensorflow_data_validation.statistics import stats_impl
from tensorflow_metadata.proto.v0 import anomalies_pb2, statistics_pb2

from recsys.components.validate import report
from recsys.components.validate.config import ValidateConfig
from recsys.core import storage
from recsys.core.beam_io import ReadDatasets, pipeline_options, to_list_batch
from recsys.core.contracts import (
    DATASET_SCHEMAS,
    EVAL_EVENTS,
    EVAL_EXAMPLES,
    EVENT_TS,
    EXAMPLES_SCHEMA,
    IMPRESSIONS,
    ITEM_FEATURES,
    ITEMS,
    SERVING_LOG,
    TRAIN_EVENTS,
    TRAIN_EXAMPLES,
    TRAINING,
    USER_FEATURES,
    USERS,
)
from recsys.core.schemas import SCHEMA_DIR, load_schema
from recsys.core.tables import DataError, dataset_rows

# TFDV emits one Beam element per distinct string value per batch for its top-k
# and unique counts, so small batches multiply Python per-element overhead.
STATS_BATCH_ROWS = 65_536
# Top values and unique counts from sketches (Misra-Gries, KMV) of bounded size: the
# exact counters hold every distinct value of every string column (an event id per
# row), which is what grew validate's memory with the data. The categorical
# features the checks read (countries, devices, categories) have far fewer values
# than the sketch's buckets, so their counts stay exact.
STATS_OPTIONS = tfdv.StatsOptions(use_sketch_based_topk_uniques=True)

# The eval examples of the run's newest day: what skew and drift compare.
SPAN = "span_examples"
PREVIOUS_SPAN = "previous_span"
# Written beside the anomaly files: what was found, as JSON (``recsys check`` reads it).
SUMMARY_FILE = "summary.json"
KINDS = {
    "schema": "the data does not match the curated schema",
    "skew": "serving computes a feature differently from training",
    "drift": "a feature's distribution changed since the previous span",
    "volume": "the number of examples changed since the previous span",
}
ACTIONS = ("block", "warn")
VOLUME_TYPES = {"COMPARATOR_LOW_NUM_EXAMPLES", "COMPARATOR_HIGH_NUM_EXAMPLES"}
WHAT_TO_DO = {
    "schema": "fix the upstream data; if the change is intended, update the schema in "
    "{schema_dir} and review the diff (`recsys schema infer` then "
    "`recsys schema diff` propose it).",
    "skew": "serving and the features stage compute these features differently: compare "
    "the serving log with the examples for that feature and fix whichever is wrong.",
    "drift": "the data changed since {baseline}. If the change is real and expected, rerun "
    'with anomaly_policy \'{{"drift": "warn"}}\' once (this span then becomes the '
    "baseline) or raise the feature's drift_comparator threshold.",
    "volume": "the number of examples changed since {baseline}: look for a partial export "
    "or lost upstream data; if the traffic change is real, rerun with "
    'anomaly_policy \'{{"volume": "warn"}}\'.',
}


class ValidationFailed(DataError):
    """Blocking anomalies were found; the message lists them and what to do."""

    def __init__(self, message: str, anomalies: list | None = None):
        super().__init__(message)
        self.anomalies = anomalies or []  # the blocking Anomaly records


@dataclass(frozen=True)
class Anomaly:
    kind: str  # one of KINDS
    dataset: str
    feature: str  # "" for the dataset as a whole
    type: str  # TFDV's AnomalyInfo.Type name, e.g. SCHEMA_NEW_COLUMN
    description: str
    action: str  # "block" or "warn"

    def line(self) -> str:
        where = f"feature '{self.feature}'" if self.feature else "dataset"
        return f"  - [{self.kind}, {self.action}] {self.dataset}: {where}: {self.description}"


def parse_policy(text: str) -> dict[str, str]:
    """``{"drift": "warn", "SCHEMA_NEW_COLUMN": "warn", ...}``: keys are anomaly
    kinds or TFDV anomaly type names; anything not listed blocks."""
    try:
        policy = json.loads(text or "{}")
    except json.JSONDecodeError as error:
        raise DataError(f"anomaly_policy is not JSON ({error}): {text!r}") from None
    known_types = set(anomalies_pb2.AnomalyInfo.Type.keys())
    if not isinstance(policy, dict):
        raise DataError(f"anomaly_policy must be a JSON object, got {text!r}")
    for key, action in policy.items():
        if key not in KINDS and key not in known_types:
            raise DataError(
                f"anomaly_policy: unknown key {key!r}; use a kind "
                f"({', '.join(KINDS)}) or a TFDV anomaly type such as "
                "SCHEMA_NEW_COLUMN"
            )
        if action not in ACTIONS:
            raise DataError(f"anomaly_policy: {key!r} must be 'block' or 'warn', got {action!r}")
    return policy


def _keyed(named: tuple[str, pa.RecordBatch], filters: dict) -> tuple[str, pa.RecordBatch]:
    """A dataset's batch as TFDV's sliced input, rows of a filtered dataset (``since``)
    kept where ``column >= start``."""
    name, batch = named
    if name in filters:
        column, start = filters[name]
        batch = batch.filter(pc.greater_equal(batch.column(column), pa.scalar(start, pa.int64())))
    return name, to_list_batch(batch)


def compute_statistics(
    datasets: dict[str, str],
    stats_dir: str,
    beam_pipeline_args: str,
    since: dict[str, tuple[str, str, int]] | None = None,
) -> dict:
    """TFDV statistics of each dataset directory, in one Beam pipeline.

    ``since`` adds filtered datasets: ``{name: (directory, column, start)}``
    keeps the rows whose ``column >= start``. All datasets go through one TFDV
    statistics transform keyed by dataset name (TFDV's sliced statistics), not
    one transform each: per-transform set-up dominated small runs.
    """
    storage.makedirs(stats_dir)
    sources = {name: (directory, None) for name, directory in datasets.items()}
    sources.update(
        {
            name: (directory, (column, start))
            for name, (directory, column, start) in (since or {}).items()
        }
    )
    combined = storage.join(stats_dir, "all.stats.pb")
    filters = {name: keep for name, (_, keep) in sources.items() if keep}
    with beam.Pipeline(options=pipeline_options(beam_pipeline_args)) as pipeline:
        _ = (
            pipeline
            | "Read"
            >> ReadDatasets(
                {name: directory for name, (directory, _) in sources.items()}, STATS_BATCH_ROWS
            )
            | "Key" >> beam.Map(_keyed, filters)
            | "Stats"
            >> stats_impl.GenerateSlicedStatisticsImpl(STATS_OPTIONS, is_slicing_enabled=True)
            | "Write" >> tfdv.WriteStatisticsToBinaryFile(combined)
        )
    statistics = {}
    for dataset in load_statistics(combined).datasets:
        statistics[dataset.name] = statistics_pb2.DatasetFeatureStatisticsList(datasets=[dataset])
        storage.write_bytes(
            storage.join(stats_dir, f"{dataset.name}.stats.pb"),
            statistics[dataset.name].SerializeToString(),
        )
    return {name: statistics[name] for name in sources}


def _anomalies(result, kind: str, dataset: str, policy: dict, comparators_only: bool = False):
    """Our Anomaly records from TFDV's Anomalies proto."""
    found = []
    infos = [(feature, info) for feature, info in sorted(result.anomaly_info.items())]
    if result.HasField("dataset_anomaly_info"):
        infos.append(("", result.dataset_anomaly_info))
    for feature, info in infos:
        for reason in info.reason:
            type_name = anomalies_pb2.AnomalyInfo.Type.Name(reason.type)
            if comparators_only and not type_name.startswith("COMPARATOR_"):
                continue  # schema anomalies of the span are reported for eval_examples
            this_kind = "volume" if type_name in VOLUME_TYPES else kind
            action = policy.get(type_name, policy.get(this_kind, "block"))
            found.append(
                Anomaly(this_kind, dataset, feature, type_name, reason.description, action)
            )
    return found


def _measurements(result, field: str) -> list[tuple[str, str, float, float]]:
    """(feature, measure, value, threshold) for every skew or drift measurement."""
    rows = []
    for info in result.drift_skew_info:
        for measurement in getattr(info, field):
            rows.append(
                (
                    ".".join(info.path.step),
                    anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(measurement.type),
                    measurement.value,
                    measurement.threshold,
                )
            )
    return rows


def find_baseline(statistics_root: str, span_day: str) -> tuple[str, str] | None:
    """The newest stored span strictly before ``span_day``: (stats path, label)."""
    if not statistics_root:
        return None
    spans = [name for name in storage.listdir(statistics_root) if name.startswith("span=")]
    earlier = [span for span in spans if span < f"span={span_day}"]
    for span in reversed(earlier):
        path = storage.join(statistics_root, span, f"{SPAN}.stats.pb")
        if storage.exists(path):
            return path, f"the previous span ({span[len('span=') :]}, {path})"
    return None


def store_span(statistics_root: str, span_day: str, stats_path: str) -> str:
    """Keep this span's statistics as the next run's drift baseline (one write: a
    reader never sees half a file)."""
    target = storage.join(statistics_root, f"span={span_day}", f"{SPAN}.stats.pb")
    storage.write_bytes(target, storage.read_bytes(stats_path))
    return target


def load_statistics(path: str) -> statistics_pb2.DatasetFeatureStatisticsList:
    """TFDV's ``load_stats_binary`` through the filesystem layer (any root)."""
    return statistics_pb2.DatasetFeatureStatisticsList.FromString(storage.read_bytes(path))


def validate(
    datasets: dict[str, str],
    schema_dir: str,
    stats_dir: str,
    anomalies_dir: str,
    span_start: int,
    config: ValidateConfig = ValidateConfig(),
    beam_pipeline_args: str = "[]",
    report_path: str | None = None,
) -> dict:
    """Compute statistics, check schema, skew and drift, write anomalies (and their
    summary) and, if asked, the HTML report; then raise if any anomaly blocks.

    ``datasets`` maps the names of ``contracts.DATASET_SCHEMAS`` to directories (an
    empty ``serving_log`` means there is none). ``config.drift_baseline`` is a
    statistics file to compare with; when empty, the newest earlier span stored under
    ``config.statistics_root`` is used, and this span is stored there if nothing
    blocks. Returns per-dataset counts, the anomalies, notes and the Markdown summary.
    """
    schema_dir = schema_dir or SCHEMA_DIR
    statistics_root, drift_baseline = config.statistics_root, config.drift_baseline
    policy = parse_policy(config.anomaly_policy)
    span_day = _day(span_start)
    notes = []
    present = {name: path for name, path in datasets.items() if dataset_rows(path) > 0}
    for name in sorted(set(datasets) - set(present)):
        notes.append(
            f"{name} has no rows"
            + (" in the span: skew was not checked" if name == SERVING_LOG else "")
        )
    schema_names = {name: DATASET_SCHEMAS[name] for name in present}
    loaded = {schema: load_schema(schema, schema_dir) for schema, _ in schema_names.values()}
    statistics = compute_statistics(
        present,
        stats_dir,
        beam_pipeline_args,
        since={SPAN: (datasets[EVAL_EXAMPLES], EVENT_TS, span_start)},
    )

    found, summary = [], {}
    table = ["| dataset | rows | schema | anomalies |", "|---|---:|---|---:|"]
    for name, (schema, environment) in schema_names.items():
        result = tfdv.validate_statistics(statistics[name], loaded[schema], environment=environment)
        _write(anomalies_dir, name, result)
        anomalies = _anomalies(result, "schema", name, policy)
        found += anomalies
        rows = statistics[name].datasets[0].num_examples
        summary[name] = {"rows": rows, "anomalies": len(anomalies)}
        label = f"{schema}.schema.pbtxt" + (f" ({environment})" if environment else "")
        table.append(f"| {name} | {rows} | {label} | {len(anomalies)} |")

    examples_schema, span = loaded[EXAMPLES_SCHEMA], statistics[SPAN]
    measurements = {"skew": [], "drift": []}
    if SERVING_LOG in statistics:
        result = tfdv.validate_statistics(
            span, examples_schema, environment=TRAINING, serving_statistics=statistics[SERVING_LOG]
        )
        _write(anomalies_dir, "skew", result)
        found += _anomalies(result, "skew", SERVING_LOG, policy, comparators_only=True)
        measurements["skew"] = _measurements(result, "skew_measurements")

    baseline = (
        (drift_baseline, f"the given baseline ({drift_baseline})")
        if drift_baseline
        else find_baseline(statistics_root, span_day)
    )
    if baseline:
        statistics[PREVIOUS_SPAN] = load_statistics(baseline[0])
        result = tfdv.validate_statistics(
            span,
            examples_schema,
            environment=TRAINING,
            previous_statistics=statistics[PREVIOUS_SPAN],
        )
        _write(anomalies_dir, "drift", result)
        found += _anomalies(result, "drift", SPAN, policy, comparators_only=True)
        measurements["drift"] = _measurements(result, "drift_measurements")
    else:
        notes.append(
            f"no earlier span under statistics_root={statistics_root!r}: drift was "
            f"not checked for span {span_day} (the first run has no baseline)"
        )

    blocking = [a for a in found if a.action == "block"]
    warnings = [a for a in found if a.action == "warn"]
    markdown = (
        f"## Data validation (span {span_day})\n\n"
        + "\n".join(table)
        + "\n"
        + "".join(
            f"\n**{title}**\n\n" + "\n".join(a.line() for a in items) + "\n"
            for title, items in (("Blocking anomalies", blocking), ("Warnings", warnings))
            if items
        )
        + "".join(f"\n- note: {note}" for note in notes)
        + "\n"
    )
    if report_path:
        # Datasets of one table are plotted together.
        groups = {
            IMPRESSIONS: [TRAIN_EVENTS, EVAL_EVENTS],
            EXAMPLES_SCHEMA: [TRAIN_EXAMPLES, EVAL_EXAMPLES, SPAN, PREVIOUS_SPAN, SERVING_LOG],
            **{name: [name] for name in (USERS, ITEMS, USER_FEATURES, ITEM_FEATURES)},
        }
        groups = {table: [n for n in names if n in statistics] for table, names in groups.items()}
        storage.write_text(
            report_path,
            report.render(statistics, groups, blocking, warnings, measurements, notes, span_day),
        )
    stored = None
    if not blocking and statistics_root:
        stored = store_span(statistics_root, span_day, storage.join(stats_dir, f"{SPAN}.stats.pb"))
    summary.update(
        markdown=markdown,
        anomalies=found,
        notes=notes,
        stored_span=stored,
        measurements=measurements,
    )
    storage.write_text(
        storage.join(anomalies_dir, SUMMARY_FILE),
        json.dumps({**summary, "anomalies": [asdict(a) for a in found]}, indent=2),
    )
    if blocking:
        raise ValidationFailed(
            _failure_message(blocking, schema_dir, anomalies_dir, baseline), blocking
        )
    return summary


def _failure_message(blocking, schema_dir, anomalies_dir, baseline) -> str:
    lines = [f"validate: {len(blocking)} blocking anomal{'y' if len(blocking) == 1 else 'ies'}:"]
    lines += [a.line() for a in blocking]
    label = baseline[1] if baseline else "the previous span"
    for kind in KINDS:
        if any(a.kind == kind for a in blocking):
            lines.append(
                f"What to do ({kind}): "
                + WHAT_TO_DO[kind].format(schema_dir=schema_dir, baseline=label)
            )
    lines.append(
        "To let an anomaly kind or type pass with a warning instead, set "
        'anomaly_policy, e.g. \'{"SCHEMA_NEW_COLUMN": "warn"}\'. '
        f"Full anomaly reports: {anomalies_dir}"
    )
    return "\n".join(lines)


def _write(anomalies_dir: str, name: str, result) -> None:
    storage.write_text(
        storage.join(anomalies_dir, f"{name}.anomalies.pbtxt"), text_format.MessageToString(result)
    )


def _day(timestamp: int) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d")


def export_schemas(schema_dir: str, destination: str) -> None:
    """Copy the schemas this run validated against, so later stages use the same ones."""
    source = schema_dir or SCHEMA_DIR
    for relative in storage.find(source):
        if not relative.endswith(".py") and "__pycache__" not in relative:
            storage.copy_file(storage.join(source, relative), storage.join(destination, relative))
