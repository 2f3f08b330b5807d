"""`recsys import`: your own interactions log (and, if you have them, item and user
attribute files) as the pipeline's raw tables, schemas, feature registry and parameters.

Only the interactions are required: a user id, an item id, a timestamp and an
engagement signal. Everything else is optional, and what the data does not have is
switched off rather than filled in: the written ``features.yaml`` keeps the packaged
registry's features the data can feed, adds your attribute columns, and lists every
other feature under ``switched_off`` with the reason (the run summary prints it).
The trailing user and item aggregates are not written: ingest derives them from the
interactions, point in time (``recsys.core.aggregates``).

The mapping (a YAML file, or the same keys from command-line options)::

    interactions:
      path: ratings.csv            # CSV (any of , ; tab |, a BOM is fine) or Parquet
      user: userId                 # column names in the file
      item: movieId
      timestamp: timestamp
      timestamp_unit: auto         # auto, s, ms, us, ns or iso
      label: rating >= 4           # a rule over a column (>=, >, <=, <, ==, !=) or a 0/1 column
      watch_seconds: dwell         # optional: seconds engaged (the ranker's second task)
      event_id: id                 # optional: a unique id per row (default: the row number)
    items:                         # optional
      path: movies.csv
      id: movieId
      separator: "|"               # optional: cells holding several values ("Comedy|Drama")
      category: genres             # optional, role category (re-ranking caps, slices)
      creator: director            # optional, role creator
      upload: added_at             # optional timestamp: item age (freshness)
      duration: length_s           # optional seconds (watch_seconds may not exceed it)
      attributes: [year]           # optional: more columns, as model features
    users:                         # optional
      path: users.csv
      id: userId
      attributes: [age, gender, occupation]

A multi-valued cell (``separator``) becomes its first value, the primary one: the
models and re-ranking take one value per attribute. Text attributes become
vocabulary features (an empty cell is ``__unknown__``); numeric ones z-scored
features (a numeric column with empty cells is switched off: no value is invented).

The written ``recsys.yaml`` proposes the window: all the data's days, and the fewest
eval days that leave ``TARGET_EVAL_USERS`` users with an engagement both in training
and in eval (the users whose metrics the gate decides on); it says how many. A label
given as a rule over a rating (``rating >= 4``) also sets ``watched_from:
impressions``: each row is something the user consumed, liked or not, so the
watched rule keeps every rated item off their pages.
"""

import contextlib
import json
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from recsys.app.local_run import DATA_CONFIG
from recsys.core import contracts, storage
from recsys.core.aggregates import AGGREGATES
from recsys.core.contracts import (
    CLICKED,
    EVENT_ID,
    EVENT_TS,
    EXAMPLES_SCHEMA,
    FEATURES_FILE,
    ITEM_DURATION,
    ITEM_ID,
    UNKNOWN,
    USER_ID,
    WATCH_SECONDS,
)
from recsys.core.derived import DAY, DERIVED
from recsys.core.features import HISTORY_COLUMNS, load_registry, registry_path
from recsys.core.limits import BATCH_ROWS, MAX_WINDOW_EVENTS
from recsys.core.progress import log
from recsys.core.schemas import load_schema
from recsys.core.tables import (
    EPOCH_UNITS,
    ISO,
    DataError,
    epoch_unit,
    ids_as_text,
    iter_raw_file,
    parse_timestamps,
    raw_table,
    read_raw_file,
    write_raw_tables,
)

DATA_SCHEMAS = "schemas"
TARGET_EVAL_USERS = 300
# The eval days are at most this share of the data's days, whatever the user count.
MAX_EVAL_SHARE = 0.25
# Text attributes with at most this many values get them as the schema's domain (a new
# value then shows as an anomaly); more are ids (no domain).
MAX_DOMAIN_VALUES = 50
# The curated features new attribute features copy their checks from (skew and drift
# comparators, presence): a text attribute and a numeric one.
TEMPLATES = {"string": ("users", "country"), "number": ("items", "duration_s")}
LABEL_RULE = re.compile(r"^\s*(\w[\w .-]*?)\s*(>=|<=|==|!=|>|<)\s*(-?[\d.]+)\s*$")
# The item attributes with a role, and the packaged feature (or column) each becomes.
ITEM_ROLES = {
    "category": "category",
    "creator": "creator_id",
    "upload": "upload_ts",
    "duration": ITEM_DURATION,
}


class MappingError(DataError):
    """The mapping or a file cannot be imported; the message names it and the fix."""


@dataclass
class Imported:
    counts: dict[str, int]  # rows per written table
    switched_off: dict[str, str]  # feature -> why
    lookback_days: int
    eval_days: int
    eval_users: int
    window: str = ""  # the proposed window, and why


def load_mapping(path: str) -> dict:
    """The mapping YAML, with file paths resolved against its directory."""
    try:
        with open(path) as handle:
            mapping = yaml.safe_load(handle) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "context_mark", None) or getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(error, "problem", None) or error
        raise MappingError(f"{path} is not valid YAML{where}: {problem}") from None
    if not isinstance(mapping, dict) or "interactions" not in mapping:
        raise MappingError(f"{path}: expected a mapping with an 'interactions' section")
    for section in mapping.values():
        if isinstance(section, dict) and section.get("path"):
            section["path"] = os.path.join(os.path.dirname(os.path.abspath(path)), section["path"])
    return mapping


def _section(section, name: str, required: tuple[str, ...], allowed: set[str]) -> dict:
    """The mapping's section ``name``, checked: its keys (besides ``path``, or a
    preset's ``frame``) are among ``allowed`` and ``required`` are given."""
    if not isinstance(section, dict):
        raise MappingError(f"mapping: '{name}' must be a section of keys, got {section!r}")
    unknown = set(section) - allowed - {"path", "frame"}
    if unknown:
        raise MappingError(
            f"mapping '{name}': unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    missing = [key for key in required if not section.get(key)]
    if missing:
        raise MappingError(f"mapping '{name}': give {missing} (the column names in your file)")
    return section


def _source(section: dict, name: str) -> str:
    """Where the section's rows come from: its file (which must exist), or a preset."""
    if section.get("frame") is not None:
        return f"{name} ({section.get('path', 'preset')})"
    where = section.get("path")
    if not where or not os.path.isfile(where):
        raise MappingError(f"mapping '{name}': file {where!r} not found")
    return where


def _check_columns(frame: pd.DataFrame, columns: list[str], where: str, name: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise MappingError(
            f"{where}: no column(s) {missing}; the file has {list(frame.columns)}. "
            f"Fix the mapping's '{name}' section."
        )


def _read(section: dict, name: str, columns: list[str]) -> tuple[pd.DataFrame, str]:
    """An attribute section's frame (given by a preset) or file, whole (one row per
    user or item), checked for ``columns``."""
    where = _source(section, name)
    frame = section["frame"] if section.get("frame") is not None else read_raw_file(where).frame
    _check_columns(frame, columns, where, name)
    return frame, where


def as_ids(values: pd.Series) -> pd.Series:
    """Ids as text, the same whether the file stores 42, 42.0 (a numeric column with
    gaps) or "42" (``ids_as_text``, as ingest reads them), stripped; empty cells stay
    missing (ingest quarantines those rows)."""
    text = ids_as_text(values).str.strip()
    return text.where(text != "", None)


def as_timestamps(values: pd.Series, unit: str, where: str) -> tuple[pd.Series, str]:
    """Unix seconds (nullable) and the unit read: declared, or detected (auto)."""
    if unit != "auto" and unit not in (ISO, *EPOCH_UNITS):
        raise MappingError(
            f"{where}: timestamp_unit {unit!r}; use auto, {ISO} or one of {list(EPOCH_UNITS)}"
        )
    seconds = parse_timestamps(values, "" if unit == "auto" else unit)
    return seconds.round().astype("Int64"), seconds.attrs.get("unit", "Parquet timestamps")


def label_of(frame: pd.DataFrame, rule: str, where: str) -> pd.Series:
    """``clicked`` (nullable 0/1) from a rule such as ``rating >= 4`` or a 0/1 column."""
    rule = str(rule)
    match = LABEL_RULE.match(rule)
    column = match.group(1) if match else rule.strip()
    if column not in frame.columns:
        raise MappingError(
            f"{where}: the label {rule!r} names no column of the file ({list(frame.columns)}); "
            "write a rule such as 'rating >= 4' or name a 0/1 column"
        )
    values = pd.to_numeric(frame[column], errors="coerce")
    if match:
        operator, threshold = match.group(2), float(match.group(3))
        compare = {
            ">=": values.ge,
            ">": values.gt,
            "<=": values.le,
            "<": values.lt,
            "==": values.eq,
            "!=": values.ne,
        }[operator]
        label = compare(threshold).astype("Int64")
    else:
        if not values.dropna().isin([0, 1]).all():
            raise MappingError(
                f"{where}: label column {column!r} holds values other than 0 and 1; "
                f"write a rule such as '{column} >= 4'"
            )
        label = values.astype("Int64")
    return label.where(values.notna())


# Before this, timestamps are not event times of a log this tool imports: an id column
# read as seconds since 1970 lands here.
PLAUSIBLE_SINCE = int(pd.Timestamp("1990-01-01", tz="UTC").timestamp())


@dataclass
class LogSummary:
    """What one pass over the interactions learns while it writes them."""

    rows: int = 0
    clicks: int = 0
    labeled: int = 0
    unreadable_ts: int = 0
    implausible_ts: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    unit: str = ""


def _source_batches(section: dict, where: str):
    """The interactions' raw rows a batch at a time: the file streamed, or the
    preset's frame."""
    if section.get("frame") is not None:
        yield section["frame"]
        return
    for raw in iter_raw_file(where, batch_rows=BATCH_ROWS):
        yield raw.frame


def interactions_table(section: dict, path: str) -> tuple[LogSummary, bool]:
    """The impressions table (event_id, event_ts, user_id, item_id, clicked,
    watch_seconds) written to ``path`` a batch at a time; returns what the pass
    learned and whether the data has watch time."""
    required = ("user", "item", "timestamp", "label")
    optional = ("timestamp_unit", "watch_seconds", "event_id")
    section = _section(section, "interactions", required, {*required, *optional})
    columns = [
        section[key] for key in ("user", "item", "timestamp", *optional[1:]) if section.get(key)
    ]
    where = _source(section, "interactions")
    unit = str(section.get("timestamp_unit", "auto"))
    watch = section.get("watch_seconds")
    summary = LogSummary()
    with contextlib.ExitStack() as stack:
        writer = None
        for frame in _source_batches(section, where):
            _check_columns(frame, columns, where, "interactions")
            if unit == "auto" and len(frame):  # read off the first rows, then kept
                unit = _detected_unit(frame[section["timestamp"]])
            seconds, summary.unit = as_timestamps(frame[section["timestamp"]], unit, where)
            label = label_of(frame, section["label"], where)
            events = pd.DataFrame(
                {
                    EVENT_ID: as_ids(frame[section["event_id"]])
                    if section.get("event_id")
                    else pd.Series(np.arange(summary.rows + 1, summary.rows + len(frame) + 1))
                    .astype(str)
                    .radd("e"),
                    EVENT_TS: seconds,
                    USER_ID: as_ids(frame[section["user"]]),
                    ITEM_ID: as_ids(frame[section["item"]]),
                    CLICKED: label,
                    # No watch time: 0, the ranker's watch head and the watch features are off.
                    WATCH_SECONDS: pd.to_numeric(frame[watch], errors="coerce") if watch else 0.0,
                }
            )
            _summarize(summary, events)
            table = raw_table(events)
            if writer is None:
                writer = stack.enter_context(storage.parquet_writer(path, table.schema))
            writer.write_table(table.cast(writer.schema))
    _check_log(summary, section, where)
    return summary, bool(watch)


def _detected_unit(values: pd.Series) -> str:
    """The epoch unit (EPOCH_UNITS key) of numeric timestamps, or ISO for text."""
    numbers = pd.to_numeric(values, errors="coerce")
    return ISO if numbers.isna().all() and values.notna().any() else epoch_unit(numbers)


def _summarize(summary: LogSummary, events: pd.DataFrame) -> None:
    seconds = events[EVENT_TS].dropna().astype(np.int64)
    summary.rows += len(events)
    summary.clicks += int(events[CLICKED].sum())
    summary.labeled += int(events[CLICKED].notna().sum())
    summary.unreadable_ts += int(events[EVENT_TS].isna().sum())
    summary.implausible_ts += int((seconds < PLAUSIBLE_SINCE).sum())
    if len(seconds):
        low, high = int(seconds.min()), int(seconds.max())
        summary.first_ts = low if summary.first_ts is None else min(summary.first_ts, low)
        summary.last_ts = high if summary.last_ts is None else max(summary.last_ts, high)


def _check_log(summary: LogSummary, section: dict, where: str) -> None:
    """Refuse what no run could use: no readable time, implausible times, a constant
    label; say what ingest will quarantine."""
    log("import", f"{where}: timestamps read as {summary.unit}")
    read = summary.rows - summary.unreadable_ts
    if read == 0:
        raise MappingError(
            f"{where}: no row of column {section['timestamp']!r} reads as a timestamp "
            "(ISO-8601 text or Unix epoch numbers). Is it the right column?"
        )
    if summary.implausible_ts > read / 2:
        span = " to ".join(
            str(pd.Timestamp(ts, unit="s", tz="UTC").date())
            for ts in (summary.first_ts, summary.last_ts)
        )
        raise MappingError(
            f"{where}: {summary.implausible_ts} of {read} timestamps in column "
            f"{section['timestamp']!r}, read as {summary.unit}, fall before 1990 (the column "
            f"spans {span}): not the times of a log's events. An id column read as seconds "
            "since 1970 looks like this: check --timestamp (the mapping's timestamp), or "
            "declare its unit with timestamp_unit."
        )
    if summary.unreadable_ts:
        log(
            "import",
            f"{where}: {summary.unreadable_ts} row(s) without a readable timestamp: kept; "
            "ingest quarantines them",
        )
    if summary.clicks == 0 or summary.clicks == summary.labeled:
        raise MappingError(
            f"{where}: the label {section['label']!r} makes "
            f"{'no' if not summary.clicks else 'every'} interaction an engagement; the "
            "ranker learns engagement against its absence, so it needs both. Choose a rule "
            "that splits them (e.g. rating >= 4)."
        )


@dataclass
class Attribute:
    """A column of an attribute file as a feature: its name, entity and kind."""

    name: str
    entity: str  # user or item
    kind: str  # string or number
    values: pd.Series


def _attribute(frame, column, separator, text_only=False) -> tuple[pd.Series, str]:
    """(the column's values, kind): numbers when every value is one (unless
    ``text_only``: ids such as a creator's), else text with the primary (first) value
    of a multi-valued cell."""
    values = frame[column]
    numbers = pd.to_numeric(values, errors="coerce")
    if not text_only and numbers.notna().sum() == values.notna().sum() and values.notna().any():
        return numbers, "number"
    text = as_ids(values)
    if separator:
        text = text.str.split(separator, regex=False).str[0].str.strip()
    return text.where(text.notna() & (text != ""), UNKNOWN).astype(object), "string"


def attribute_table(
    section: dict | None, entity: str
) -> tuple[pd.DataFrame | None, list[Attribute], dict[str, str]]:
    """The users or items table of an attribute file, its attribute features, and the
    attribute columns switched off (empty numeric cells) with why."""
    if not section:
        return None, [], {}
    roles = ITEM_ROLES if entity == "item" else {}
    allowed = {"id", "separator", "attributes", *roles}
    section = _section(section, f"{entity}s", ("id",), allowed)
    named = {role: section[role] for role in roles if section.get(role)}
    extra = list(section.get("attributes") or [])
    frame, where = _read(section, f"{entity}s", [section["id"], *named.values(), *extra])
    key = f"{entity}_id"
    table = pd.DataFrame({key: as_ids(frame[section["id"]])})
    attributes, off = [], {}
    for role, column in named.items():
        name = roles[role]
        if role == "upload":
            table[name], _ = as_timestamps(frame[column], "auto", where)
            continue
        values, kind = _attribute(
            frame, column, section.get("separator"), text_only=role != "duration"
        )
        if role == "duration" and kind != "number":
            raise MappingError(f"{where}: duration column {column!r} is not numeric (seconds)")
        table[name] = values
    reserved = {key, *roles.values(), *reserved_names()}
    for column in extra:
        name = re.sub(r"\W+", "_", str(column)).strip("_").lower()
        if name in reserved:
            raise MappingError(
                f"{where}: attribute {column!r} would be called {name!r}, a name the "
                "pipeline already uses; rename the column"
            )
        values, kind = _attribute(frame, column, section.get("separator"))
        if kind == "number" and values.isna().any():
            off[name] = (
                f"{entity} attribute with {int(values.isna().sum())} empty cell(s) in {where}"
            )
            continue
        table[name] = values
        attributes.append(Attribute(name, entity, kind, values))
    return table, attributes, off


def packaged_registry() -> dict:
    """The packaged features.yaml as a document (features and crosses, in order)."""
    with open(registry_path()) as handle:
        return yaml.safe_load(handle)


def reserved_names() -> set[str]:
    """Names an attribute may not take: the packaged features that are not
    attributes of a users or items table, and the columns of the contract."""
    features = load_registry().features.values()
    return {f.name for f in features if f.source not in ("users", "items")} | {
        EVENT_ID,
        EVENT_TS,
        contracts.FEATURE_TS,
        contracts.CREATED_TS,
    }


# The packaged features made of watch time: its trailing sum and the history's mean.
WATCH_FEATURES = [
    name for name, aggregate in AGGREGATES.items() if aggregate.column == WATCH_SECONDS
] + [HISTORY_COLUMNS[2]]


def switched_off(
    has_watch: bool, users: pd.DataFrame | None, items: pd.DataFrame | None
) -> dict[str, str]:
    """The packaged registry's features this data cannot feed, with why."""
    off = {}
    for name, feature in load_registry().features.items():
        if not has_watch and name in WATCH_FEATURES:
            off[name] = "no watch time in the interactions (it would be 0 for everyone)"
        elif feature.source in ("users", "items"):
            table = users if feature.source == "users" else items
            if table is None:
                off[name] = f"no {feature.source} file"
            elif name not in table:
                off[name] = f"the {feature.source} mapping names no column for it"
        elif feature.source == "derived":
            for table_name, columns in DERIVED[name][0].items():
                table = users if table_name == "users" else items
                if table is None or not set(columns) <= set(table):
                    off[name] = f"needs {table_name}.{', '.join(columns)}, which the data lacks"
    return off


def _timestamp_floor(first_ts: int) -> int:
    """1 January of the data's first year: the schemas' lower bound on timestamps."""
    first = pd.Timestamp(int(first_ts), unit="s", tz="UTC")
    return int(pd.Timestamp(year=first.year, month=1, day=1, tz="UTC").timestamp())


def _attribute_spec(attribute: Attribute, template: schema_pb2.Feature) -> schema_pb2.Feature:
    """A schema feature for ``attribute``, with the template's presence and checks."""
    spec = schema_pb2.Feature()
    spec.CopyFrom(template)
    spec.name = attribute.name
    spec.ClearField("domain_info")
    spec.ClearField("distribution_constraints")
    if attribute.kind == "string":
        spec.type = schema_pb2.BYTES
        values = sorted(set(attribute.values.astype(str)))
        if len(values) <= MAX_DOMAIN_VALUES:
            spec.string_domain.name = attribute.name
            spec.string_domain.value.extend(values)
            spec.distribution_constraints.min_domain_mass = 0.99
    else:
        spec.type = schema_pb2.FLOAT
        if attribute.values.min() >= 0:
            spec.float_domain.min = 0.0  # no maximum: the data is a sample
    return spec


def columns_of(tables: dict[str, pd.DataFrame], name: str) -> set[str]:
    """The columns of table ``name`` as imported; its key alone when there is no file."""
    if name in tables:
        return set(tables[name].columns)
    return {USER_ID if name == "users" else ITEM_ID}


def write_schemas(
    out_dir: str,
    off: dict[str, str],
    attributes: list[Attribute],
    tables: dict[str, pd.DataFrame],
    floor: int,
) -> None:
    """The curated schemas for this data: switched-off features and absent columns
    removed, the attributes added, domains and the timestamp floor from the data."""
    os.makedirs(out_dir, exist_ok=True)
    names = {attribute.name for attribute in attributes}
    templates = {
        schema: {f.name: f for f in load_schema(schema).feature}
        for schema in ("users", "items", EXAMPLES_SCHEMA)
    }
    for name in (
        "impressions",
        "users",
        "items",
        "user_features",
        "item_features",
        EXAMPLES_SCHEMA,
    ):
        schema = load_schema(name)
        entity_table = name if name in ("users", "items") else None
        kept = []
        for feature in schema.feature:
            if feature.name in off or feature.name in names:
                continue
            if entity_table and feature.name not in columns_of(tables, entity_table):
                continue  # an attribute column the data does not have
            if feature.name.endswith(contracts.TIMESTAMP_SUFFIX) and feature.HasField("int_domain"):
                feature.int_domain.min = floor
            if feature.name == "category" and "items" in tables:
                del feature.string_domain.value[:]
                feature.string_domain.value.extend(
                    sorted(set(tables["items"]["category"].astype(str)))
                )
            if feature.name == ITEM_DURATION:
                feature.float_domain.min = 0.0
            kept.append(feature)
        for attribute in attributes:
            if name in (f"{attribute.entity}s", EXAMPLES_SCHEMA):
                source, column = TEMPLATES[attribute.kind]
                template = templates[EXAMPLES_SCHEMA if name == EXAMPLES_SCHEMA else source]
                kept.append(_attribute_spec(attribute, template[column]))
        del schema.feature[:]
        schema.feature.extend(kept)
        with open(os.path.join(out_dir, f"{name}.schema.pbtxt"), "w") as handle:
            handle.write(
                f"# The curated {name} schema fitted to this data by `recsys import`: review it\n"
                "# like code (domains and bounds come from the data you imported).\n"
            )
            handle.write(text_format.MessageToString(schema))


def registry_document(off: dict[str, str], attributes: list[Attribute]) -> dict:
    """features.yaml for this data: the packaged features it can feed, in their
    order, each entity's attributes after its id, and the switched-off ones with why."""
    packaged = packaged_registry()
    features = {}
    for name, spec in packaged["features"].items():
        if name in off:
            continue
        features[name] = spec
        entity = spec.get("entity") if spec.get("group") == "id" else None
        for attribute in attributes:
            if attribute.entity == entity and attribute.name not in packaged["features"]:
                features[attribute.name] = _attribute_entry(attribute)
    for attribute in attributes:
        if attribute.name in packaged["features"]:
            features[attribute.name] = {
                **packaged["features"][attribute.name],
                **_attribute_entry(attribute),
            }
    crosses = {
        name: spec
        for name, spec in (packaged.get("crosses") or {}).items()
        if all(column in features for column in spec.get("of", ()))
    }
    return {"features": features, "crosses": crosses, "switched_off": off}


def _attribute_entry(attribute: Attribute) -> dict:
    towers = (
        [contracts.QUERY_TOWER, contracts.RANKER]
        if attribute.entity == "user"
        else [contracts.CANDIDATE_TOWER, contracts.RANKER]
    )
    if attribute.kind == "string":
        transform = "vocabulary"
    else:  # heavy-tailed non-negative numbers (counts, lengths) get log1p first
        transform = "log_z_score" if attribute.values.min() >= 0 else "z_score"
    return {
        "group": attribute.entity,
        "source": f"{attribute.entity}s",
        "transform": transform,
        "models": towers,
    }


def write_registry(path: str, document: dict) -> None:
    lines = [
        "# The feature registry for this data, written by `recsys import` from the packaged",
        "# one (schemas/features.yaml explains each key). switched_off: the packaged",
        "# features this data cannot feed, and why; `recsys run` lists them in its summary.",
        "",
    ]
    for section in ("features", "crosses", "switched_off"):
        lines.append(f"{section}:" + ("" if document[section] else " {}"))
        lines += [
            f"  {name}: "
            + (
                json.dumps(spec)  # a reason: JSON text is YAML too
                if isinstance(spec, str)
                else yaml.safe_dump(spec, default_flow_style=True, width=1000).strip()
            )
            for name, spec in document[section].items()
        ]
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")


def _window_batches(events: pd.DataFrame | str):
    """(event_ts seconds, user_id, clicked) frames of a log: the frame itself, or the
    written impressions file streamed."""
    if isinstance(events, pd.DataFrame):
        yield events[[EVENT_TS, USER_ID, CLICKED]]
        return
    for batch in storage.iter_parquet(events, BATCH_ROWS, [EVENT_TS, USER_ID, CLICKED]):
        frame = batch.to_pandas()
        stamps = frame[EVENT_TS]
        if pd.api.types.is_datetime64_any_dtype(stamps):
            frame[EVENT_TS] = (stamps.astype("int64") // 10**9).where(stamps.notna())
        yield frame


def propose_window(
    events: pd.DataFrame | str, max_events: int = MAX_WINDOW_EVENTS
) -> tuple[int, int, int]:
    """(lookback_days, eval_days, eval users) for a log (a frame, or the written
    impressions file, read as it streams): the newest days that hold at most
    ``max_events`` events (all of them when they fit), and the fewest eval days (at
    most MAX_EVAL_SHARE of them) that leave TARGET_EVAL_USERS users with an engagement
    before and within the eval days; else the days that leave the most."""
    per_day = pd.Series(dtype=np.int64)
    for frame in _window_batches(events):
        valid = frame.dropna(subset=[EVENT_TS, USER_ID, CLICKED])
        days = valid[EVENT_TS].astype(np.int64) // DAY
        per_day = per_day.add(days.value_counts(), fill_value=0)
    if per_day.empty:
        raise MappingError("the interactions have no row with a time, a user and a label")
    first_day, last_day = int(per_day.index.min()), int(per_day.index.max())
    if last_day == first_day:
        raise MappingError(
            "the interactions span a single day; a time-based split needs at least two "
            "(train before eval)"
        )
    calendar = per_day.reindex(range(first_day, last_day + 1), fill_value=0)
    newest_first = calendar.iloc[::-1].cumsum()
    fitting = int((newest_first <= max_events).sum())
    start_day = max(first_day, last_day - max(fitting, 2) + 1)
    days = last_day - start_day + 1
    as_of = (last_day + 1) * DAY
    spans = []  # per user: first and last engagement in the window
    for frame in _window_batches(events):
        valid = frame.dropna(subset=[EVENT_TS, USER_ID, CLICKED])
        seconds = valid[EVENT_TS].astype(np.int64)
        engaged = valid[(valid[CLICKED] == 1).to_numpy() & (seconds >= start_day * DAY).to_numpy()]
        spans.append(engaged.groupby(USER_ID)[EVENT_TS].agg(["min", "max"]))
        if len(spans) > 8:
            spans = [_merged_spans(spans)]
    merged = _merged_spans(spans)
    first, last = merged["min"].to_numpy(np.int64), merged["max"].to_numpy(np.int64)
    longest = max(1, min(days - 1, int(days * MAX_EVAL_SHARE)))
    counts = [
        int(((first < as_of - e * DAY) & (last >= as_of - e * DAY)).sum())
        for e in range(1, longest + 1)
    ]
    enough = [e for e, users in enumerate(counts, 1) if users >= TARGET_EVAL_USERS]
    eval_days = enough[0] if enough else int(np.argmax(counts)) + 1
    return days, eval_days, counts[eval_days - 1]


def _merged_spans(spans: list[pd.DataFrame]) -> pd.DataFrame:
    if not spans:
        return pd.DataFrame({"min": [], "max": []})
    together = pd.concat(spans)
    return together.groupby(level=0).agg({"min": "min", "max": "max"})


def _report_unlisted(events_path: str, table: pd.DataFrame, name: str) -> None:
    """Say how many interactions name an id the attribute file lacks (ingest
    quarantines them), reading the written interactions' ids as they stream."""
    key = table.columns[0]
    listed = pa.array(table[key].astype(str).to_numpy(object), pa.string())
    rows, ids, example = 0, [], None
    for batch in storage.iter_parquet(events_path, BATCH_ROWS, [key]):
        column = batch.column(0)
        unlisted = column.filter(pc.invert(pc.is_in(column, listed).fill_null(False)))
        if len(unlisted):
            rows += len(unlisted)
            ids.append(pc.unique(unlisted))
            example = example or unlisted[0].as_py()
    if rows:
        distinct = len(pc.unique(pa.concat_arrays(ids)))
        log(
            "import",
            f"{rows} interaction(s) of {distinct} {key}(s) missing from the {name} file (e.g. "
            f"{example}): kept; ingest quarantines them as unknown_{key}",
        )


def import_data(mapping: dict, out: str, max_window_events: int = MAX_WINDOW_EVENTS) -> Imported:
    """Write ``out/impressions.parquet`` (and users/items), ``out/schemas/`` and
    ``out/recsys.yaml`` from ``mapping`` (``load_mapping``'s form)."""
    unknown = set(mapping) - {"interactions", "items", "users"}
    if unknown:
        raise MappingError(
            f"mapping: unknown section(s) {sorted(unknown)}; the sections are "
            "interactions, items and users"
        )
    events_path = os.path.join(out, "impressions.parquet")
    log_summary, has_watch = interactions_table(mapping["interactions"], events_path)
    users, user_attributes, users_off = attribute_table(mapping.get("users"), "user")
    items, item_attributes, items_off = attribute_table(mapping.get("items"), "item")
    off = {**switched_off(has_watch, users, items), **users_off, **items_off}
    tables = {}
    for name, table in (("users", users), ("items", items)):
        if table is None:
            continue
        tables[name] = table
        _report_unlisted(events_path, table, name)
    counts = {"impressions": log_summary.rows, **write_raw_tables(tables, out)}
    schemas = os.path.join(out, DATA_SCHEMAS)
    write_schemas(
        schemas,
        off,
        user_attributes + item_attributes,
        tables,
        _timestamp_floor(log_summary.first_ts),
    )
    write_registry(
        os.path.join(schemas, FEATURES_FILE),
        registry_document(off, user_attributes + item_attributes),
    )
    lookback_days, eval_days, eval_users = propose_window(events_path, max_window_events)
    total_days = log_summary.last_ts // DAY - log_summary.first_ts // DAY + 1
    window = (
        f"all {lookback_days} days of the data ({log_summary.rows:,} events, within "
        f"max_window_events {max_window_events:,})"
        if lookback_days == total_days
        else f"the newest {lookback_days} of the data's {total_days} days, the most that hold "
        f"at most {max_window_events:,} events (max_window_events: about two hours of "
        "this pipeline on 2 cores, docs/benchmarks.md; older days are left out)"
    )
    parameters = {
        "schema_dir": DATA_SCHEMAS,
        "lookback_days": lookback_days,
        "eval_days": eval_days,
    }
    if "creator_id" in off:
        # No creators: the default per-creator cap has nothing to act on.
        parameters["rerank"] = '{"max_per_creator": 0}'
    if LABEL_RULE.match(str(mapping["interactions"].get("label", ""))):
        # A label read off a rating: every row is an item the user consumed, liked or
        # not, which pages should not offer again.
        parameters["watched_from"] = "impressions"
    with open(os.path.join(out, DATA_CONFIG), "w") as handle:
        handle.write(
            "# Pipeline parameters for this data, written by `recsys import`; `recsys run\n"
            "# --data <this dir>` and `recsys check` read them, --config overrides them.\n"
            f"# The window: {window}; the last {eval_days}\n"
            f"# are the eval split, where {eval_users} users engage who also engaged before it.\n"
        )
        yaml.safe_dump(parameters, handle, sort_keys=False)
    if eval_users < TARGET_EVAL_USERS:
        log(
            "import",
            f"only {eval_users} users engage both before and within the best eval period "
            f"({eval_days} days): the gate's metrics will have wide intervals",
        )
    return Imported(counts, off, lookback_days, eval_days, eval_users, window)
