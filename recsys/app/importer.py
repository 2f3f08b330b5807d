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
and in eval (the users whose metrics the gate decides on); it says how many.
"""

import json
import os
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import yaml
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from recsys.app.local_run import DATA_CONFIG
from recsys.core import contracts
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
from recsys.core.progress import log
from recsys.core.schemas import load_schema
from recsys.core.tables import (
    EPOCH_UNITS,
    ISO,
    DataError,
    ids_as_text,
    parse_timestamps,
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


def _read(section: dict, name: str, columns: list[str]) -> tuple[pd.DataFrame, str]:
    """The section's frame (given by a preset) or file, checked for ``columns``."""
    if section.get("frame") is not None:
        frame, where = section["frame"], f"{name} ({section.get('path', 'preset')})"
    else:
        where = section.get("path")
        if not where or not os.path.isfile(where):
            raise MappingError(f"mapping '{name}': file {where!r} not found")
        frame = read_raw_file(where).frame
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise MappingError(
            f"{where}: no column(s) {missing}; the file has {list(frame.columns)}. "
            f"Fix the mapping's '{name}' section."
        )
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


def interactions_table(section: dict) -> tuple[pd.DataFrame, bool]:
    """The impressions table (event_id, event_ts, user_id, item_id, clicked,
    watch_seconds) and whether the data has watch time."""
    required = ("user", "item", "timestamp", "label")
    optional = ("timestamp_unit", "watch_seconds", "event_id")
    section = _section(section, "interactions", required, {*required, *optional})
    columns = [
        section[key] for key in ("user", "item", "timestamp", *optional[1:]) if section.get(key)
    ]
    frame, where = _read(section, "interactions", columns)
    seconds, unit = as_timestamps(
        frame[section["timestamp"]], str(section.get("timestamp_unit", "auto")), where
    )
    log("import", f"{where}: timestamps read as {unit}")
    bad = int(seconds.isna().sum())
    if bad:
        log(
            "import",
            f"{where}: {bad} row(s) without a readable timestamp: kept; ingest quarantines them",
        )
    label = label_of(frame, section["label"], where)
    clicks = int(label.sum())
    if clicks == 0 or clicks == int(label.notna().sum()):
        raise MappingError(
            f"{where}: the label {section['label']!r} makes {'no' if not clicks else 'every'} "
            "interaction an engagement; the ranker learns engagement against its absence, "
            "so it needs both. Choose a rule that splits them (e.g. rating >= 4)."
        )
    watch = section.get("watch_seconds")
    events = pd.DataFrame(
        {
            EVENT_ID: as_ids(frame[section["event_id"]])
            if section.get("event_id")
            else pd.Series(np.arange(1, len(frame) + 1)).astype(str).radd("e"),
            EVENT_TS: seconds,
            USER_ID: as_ids(frame[section["user"]]),
            ITEM_ID: as_ids(frame[section["item"]]),
            CLICKED: label,
            # No watch time: 0, the ranker's watch head and the watch features are off.
            WATCH_SECONDS: pd.to_numeric(frame[watch], errors="coerce") if watch else 0.0,
        }
    )
    return events, bool(watch)


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


def _timestamp_floor(seconds: pd.Series) -> int:
    """1 January of the data's first year: the schemas' lower bound on timestamps."""
    first = pd.Timestamp(int(seconds.min()), unit="s", tz="UTC")
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
        "# one (recsys/schemas/features.yaml explains each key). switched_off: the packaged",
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


def propose_window(events: pd.DataFrame) -> tuple[int, int, int]:
    """(lookback_days, eval_days, eval users): all the data's days, and the fewest
    eval days (at most MAX_EVAL_SHARE of them) that leave TARGET_EVAL_USERS users
    with an engagement before and within the eval days; else the days that leave
    the most."""
    valid = events.dropna(subset=[EVENT_TS, USER_ID, CLICKED])
    seconds = valid[EVENT_TS].astype(np.int64)
    first_day, last_day = int(seconds.min()) // DAY, int(seconds.max()) // DAY
    days = last_day - first_day + 1
    as_of = (last_day + 1) * DAY
    engaged = valid[valid[CLICKED] == 1].groupby(USER_ID)[EVENT_TS]
    first, last = engaged.min().to_numpy(np.int64), engaged.max().to_numpy(np.int64)
    longest = max(1, min(days - 1, int(days * MAX_EVAL_SHARE)))
    if days < 2:
        raise MappingError(
            "the interactions span a single day; a time-based split needs at least two "
            "(train before eval)"
        )
    counts = [
        int(((first < as_of - e * DAY) & (last >= as_of - e * DAY)).sum())
        for e in range(1, longest + 1)
    ]
    enough = [e for e, users in enumerate(counts, 1) if users >= TARGET_EVAL_USERS]
    eval_days = enough[0] if enough else int(np.argmax(counts)) + 1
    return days, eval_days, counts[eval_days - 1]


def import_data(mapping: dict, out: str) -> Imported:
    """Write ``out/impressions.parquet`` (and users/items), ``out/schemas/`` and
    ``out/recsys.yaml`` from ``mapping`` (``load_mapping``'s form)."""
    unknown = set(mapping) - {"interactions", "items", "users"}
    if unknown:
        raise MappingError(
            f"mapping: unknown section(s) {sorted(unknown)}; the sections are "
            "interactions, items and users"
        )
    events, has_watch = interactions_table(mapping["interactions"])
    users, user_attributes, users_off = attribute_table(mapping.get("users"), "user")
    items, item_attributes, items_off = attribute_table(mapping.get("items"), "item")
    off = {**switched_off(has_watch, users, items), **users_off, **items_off}
    tables = {"impressions": events}
    for name, table in (("users", users), ("items", items)):
        if table is None:
            continue
        tables[name] = table
        key = table.columns[0]
        unlisted = ~events[key].isin(table[key])
        if unlisted.any():
            log(
                "import",
                f"{int(unlisted.sum())} interaction(s) of {events.loc[unlisted, key].nunique()} "
                f"{key}(s) missing from the {name} file (e.g. {events.loc[unlisted, key].iloc[0]}):"
                f" kept; ingest quarantines them as unknown_{key}",
            )
    counts = write_raw_tables(tables, out)
    schemas = os.path.join(out, DATA_SCHEMAS)
    write_schemas(
        schemas,
        off,
        user_attributes + item_attributes,
        tables,
        _timestamp_floor(events[EVENT_TS].dropna()),
    )
    write_registry(
        os.path.join(schemas, FEATURES_FILE),
        registry_document(off, user_attributes + item_attributes),
    )
    lookback_days, eval_days, eval_users = propose_window(events)
    parameters = {
        "schema_dir": DATA_SCHEMAS,
        "lookback_days": lookback_days,
        "eval_days": eval_days,
    }
    if "creator_id" in off:
        # No creators: the default per-creator cap has nothing to act on.
        parameters["rerank"] = '{"max_per_creator": 0}'
    with open(os.path.join(out, DATA_CONFIG), "w") as handle:
        handle.write(
            "# Pipeline parameters for this data, written by `recsys import`; `recsys run\n"
            "# --data <this dir>` and `recsys check` read them, --config overrides them.\n"
            f"# The window: all {lookback_days} days of the data; the last {eval_days} are the\n"
            f"# eval split, where {eval_users} users engage who also engaged before it.\n"
        )
        yaml.safe_dump(parameters, handle, sort_keys=False)
    if eval_users < TARGET_EVAL_USERS:
        log(
            "import",
            f"only {eval_users} users engage both before and within the best eval period "
            f"({eval_days} days): the gate's metrics will have wide intervals",
        )
    return Imported(counts, off, lookback_days, eval_days, eval_users)
