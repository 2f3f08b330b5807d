"""The raw-data contract, checked row by row at ingest.

Column rules come from the curated schemas in ``schemas/`` (type, required,
numeric range), so the schema is the one place a column is described. Rules a
schema cannot express (unique keys, known ids, watch time within the video,
nothing from the future) are written out in ``ingest.py``.

A row that breaks a rule is never dropped: it goes to the quarantine with the
first reason it failed, its source file and row number, and the original values.
Everything here works on whole columns (pandas/numpy); only quarantined rows are
turned into JSON one by one.

String values outside a schema's ``string_domain`` are *not* rejected here: a
new country or device is a usable row and a question for the schema's owner,
so validate reports it (TFDV) and blocks the run by default.
"""

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tensorflow_metadata.proto.v0 import schema_pb2

from recsys.core.contracts import TIMESTAMP_SUFFIX
from recsys.core.schemas import is_list
from recsys.core.tables import DataError, RawFile, ids_as_text, parse_timestamps

# Reasons a row is quarantined, in the order they are checked.
REASONS = {
    "ragged_row": "a CSV row has more or fewer fields than the header",
    "undecodable_text": "a text value is not valid in the declared encoding (input_encoding)",
    "missing_value": "a required column is empty",
    "wrong_type": "a value does not parse as the column's type",
    "not_finite": "a number is NaN or infinite",
    "out_of_range": "a number or timestamp is outside the schema's domain",
    "future_timestamp": "a timestamp is later than the time the run started",
    "duplicate_key": "the row's key was already seen in an earlier row",
    "unknown_user_id": "the user_id is not in the users table",
    "unknown_item_id": "the item_id is not in the items table",
    "watch_exceeds_duration": "watch_seconds is longer than the video's duration_s",
}


@dataclass(frozen=True)
class ColumnRule:
    name: str
    kind: str  # "int", "float", "text", "timestamp" or "list" (of text; min/max = length)
    required: bool
    minimum: float | None = None
    maximum: float | None = None


def column_rules(schema: schema_pb2.Schema, environment: str | None = None) -> list[ColumnRule]:
    """One rule per schema feature present in ``environment``. Columns named
    ``*_ts`` are timestamps: any common encoding, stored as Unix seconds."""
    rules = []
    for feature in schema.feature:
        if environment and environment in feature.not_in_environment:
            continue
        if feature.name.endswith(TIMESTAMP_SUFFIX):
            kind = "timestamp"
        elif is_list(feature):
            kind = "list"  # e.g. the engagement history: a list of item ids
        else:
            kind = {schema_pb2.INT: "int", schema_pb2.FLOAT: "float"}.get(feature.type, "text")
        domain = (
            feature.value_count
            if kind == "list"
            else feature.int_domain
            if feature.HasField("int_domain")
            else feature.float_domain
            if feature.HasField("float_domain")
            else None
        )
        minimum = domain.min if domain is not None and domain.HasField("min") else None
        maximum = domain.max if domain is not None and domain.HasField("max") else None
        required = feature.presence.min_fraction >= 1.0
        rules.append(ColumnRule(feature.name, kind, required, minimum, maximum))
    return rules


class TableCheck:
    """One raw table under check: its rows, and the first reason each row failed."""

    def __init__(self, table: str, files: list[RawFile]):
        self.table = table
        self.raw = (
            pd.concat([f.frame for f in files], ignore_index=True)
            if len(files) > 1
            else files[0].frame.reset_index(drop=True)
        )
        self.missing = {
            name: np.concatenate([f.missing.get(name, np.ones(len(f.frame), bool)) for f in files])
            for name in self.raw.columns
        }
        self.source = np.concatenate([np.full(len(f.frame), f.path, dtype=object) for f in files])
        self.row = np.concatenate([f.rows for f in files])
        n = len(self.raw)
        self.reason = np.full(n, None, dtype=object)
        self.column = np.full(n, "", dtype=object)
        self.detail = np.full(n, "", dtype=object)
        self.values = pd.DataFrame(index=self.raw.index)  # typed values of checked columns
        self.kinds: dict[str, str] = {}  # checked column -> rule kind
        self.notes: list[str] = []  # how a column was read, when the user should know
        self.reject(np.concatenate([f.undecodable for f in files]), "undecodable_text")

    @property
    def accepted(self) -> np.ndarray:
        return pd.isna(self.reason)

    def reject(self, rows, reason: str, column: str = "", detail: str = "") -> int:
        """Quarantine ``rows`` (a boolean mask) not already quarantined; returns how many."""
        new = np.asarray(rows, dtype=bool) & self.accepted
        self.reason[new], self.column[new], self.detail[new] = reason, column, detail
        return int(new.sum())

    def apply(self, rules: list[ColumnRule], now: int) -> None:
        rules = [rule for rule in rules if rule.required or rule.name in self.raw.columns]
        self.kinds = {rule.name: rule.kind for rule in rules}
        for rule in rules:
            if rule.name not in self.raw.columns:
                raise DataError(
                    f"table '{self.table}' ({sorted(set(self.source))}): required column "
                    f"'{rule.name}' is missing; found {list(self.raw.columns)}. Rename or add it "
                    "(README, 'Bring your own data')."
                )
            self.values[rule.name] = self._parse(rule, now)

    def _parse_list(self, rule: ColumnRule) -> pd.Series:
        raw, name = self.raw[rule.name], rule.name
        missing = self.missing[name] | raw.isna().to_numpy()
        if rule.required:
            self.reject(missing, "missing_value", name)
        # One call per row: Parquet list columns arrive as arrays, CSV has only text.
        lengths = raw.map(
            lambda value: len(value) if isinstance(value, (list, tuple, np.ndarray)) else -1
        ).to_numpy()
        listed = lengths >= 0
        self.reject(
            ~missing & ~listed,
            "wrong_type",
            name,
            "not a list of ids (a Parquet list column; CSV cannot hold lists)",
        )
        if rule.minimum is not None:
            self.reject(
                listed & (lengths < rule.minimum),
                "out_of_range",
                name,
                f"fewer than {rule.minimum:g} values",
            )
        if rule.maximum is not None:
            self.reject(
                listed & (lengths > rule.maximum),
                "out_of_range",
                name,
                f"more than {rule.maximum:g} values",
            )
        return raw

    def _parse(self, rule: ColumnRule, now: int) -> pd.Series:
        raw, name = self.raw[rule.name], rule.name
        if rule.kind == "list":
            return self._parse_list(rule)
        trimmed = _trimmed(raw) if raw.dtype == object else None  # text as read
        missing = (
            self.missing[name] if trimmed is None else self.missing[name] | _equals(trimmed, "")
        )
        if rule.required:
            self.reject(missing, "missing_value", name)
        if rule.kind == "text":
            return ids_as_text(raw, missing)
        if rule.kind == "timestamp":
            values = parse_timestamps(raw)
            self.reject(
                ~missing & values.isna().to_numpy(),
                "wrong_type",
                name,
                "not a timestamp (ISO-8601, Unix epoch number or Parquet timestamp)",
            )
            unit = values.attrs.get("unit", "seconds")
            if unit != "seconds":
                self.notes.append(
                    f"table '{self.table}': column '{name}' holds Unix epoch {unit} "
                    f"(e.g. {raw[~missing].iloc[0]}), read as {unit}"
                )
        else:
            values = pd.to_numeric(raw, errors="coerce").astype(float)
            unparsed = np.zeros(len(raw), dtype=bool)  # a numeric column always parses
            if trimmed is not None:  # text: garbage becomes NaN, but so does the text "nan"
                unparsed = (
                    ~missing & values.isna().to_numpy() & ~_equals(pc.utf8_lower(trimmed), "nan")
                )
            self.reject(unparsed, "wrong_type", name, f"not a number ({rule.kind})")
            self.reject(~missing & ~unparsed & ~np.isfinite(values.to_numpy()), "not_finite", name)
            if rule.kind == "int":
                finite = np.isfinite(values.to_numpy())
                fractional = finite & (
                    np.floor(values.to_numpy(), where=finite, out=np.zeros(len(values)))
                    != values.to_numpy()
                )
                self.reject(fractional, "wrong_type", name, "not a whole number")
        checked = values.to_numpy(dtype=float)
        if rule.minimum is not None:
            self.reject(checked < rule.minimum, "out_of_range", name, f"below {rule.minimum:g}")
        if rule.maximum is not None:
            self.reject(checked > rule.maximum, "out_of_range", name, f"above {rule.maximum:g}")
        if rule.kind == "timestamp":
            self.reject(
                checked > now,
                "future_timestamp",
                name,
                f"after the run started ({pd.Timestamp(now, unit='s', tz='UTC')})",
            )
        return values

    def typed(self, keep: np.ndarray | None = None) -> pd.DataFrame:
        """Accepted rows (of those ``keep`` selects): checked columns typed
        (int64/float64/str), other columns as read."""
        ok = self.accepted if keep is None else self.accepted & keep
        out = self.raw[ok].copy()
        for name, kind in self.kinds.items():
            values = self.values.loc[ok, name]
            if kind in ("int", "timestamp"):
                out[name] = values.astype("int64")
            elif kind == "float":
                out[name] = values.astype("float64")
            elif kind == "list":
                out[name] = values.map(list)
            else:
                out[name] = values.astype(str)
        return out.reset_index(drop=True)

    def quarantined(self) -> pd.DataFrame:
        bad = ~self.accepted
        originals = self.raw[bad].to_json(
            orient="records", lines=True, date_format="iso", default_handler=str, force_ascii=False
        )
        return pd.DataFrame(
            {
                "table": self.table,
                "source_file": self.source[bad].astype(str),
                "row": self.row[bad].astype(np.int64),
                "reason": self.reason[bad].astype(str),
                "column": self.column[bad].astype(str),
                "detail": self.detail[bad].astype(str),
                "original": originals.splitlines() if bad.any() else [],
            }
        )


def ragged_rows(table: str, raw: RawFile) -> pd.DataFrame:
    """The quarantine rows of ``raw``'s CSV rows that had too few or too many fields;
    the original is the row's text."""
    return pd.DataFrame(
        {
            "table": table,
            "source_file": raw.path,
            "row": np.array([row for row, *_ in raw.ragged], dtype=np.int64),
            "reason": "ragged_row",
            "column": "",
            "detail": [
                f"{n} fields; the header has {expected}" for _, n, expected, _ in raw.ragged
            ],
            "original": [json.dumps(text, ensure_ascii=False) for *_, text in raw.ragged],
        },
        columns=QUARANTINE_SCHEMA.names,
    )


# The quarantine's columns: where a row came from, why it was rejected, its values.
QUARANTINE_SCHEMA = pa.schema(
    [
        ("table", pa.string()),
        ("source_file", pa.string()),
        ("row", pa.int64()),
        ("reason", pa.string()),
        ("column", pa.string()),
        ("detail", pa.string()),
        ("original", pa.string()),
    ]
)


def _trimmed(values: pd.Series) -> pa.Array:
    """Text values without surrounding whitespace, computed in Arrow, not per row."""
    try:
        text = pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types: the text of each value
        text = pa.array(values.astype(str), type=pa.string())
    return pc.utf8_trim_whitespace(text)


def _equals(text: pa.Array, value: str) -> np.ndarray:
    return pc.fill_null(pc.equal(text, value), False).to_numpy(zero_copy_only=False)


def reject_rate_error(
    table: str,
    checked: int,
    quarantined: int,
    reasons: dict[tuple[str, str], int],
    examples: pd.DataFrame,
    limit: float,
    quarantine_path: str,
) -> str:
    """The message for a table whose reject rate is above ``limit``: its top
    (reason, column) counts with example rows."""
    lines = [
        f"ingest: {quarantined} of {checked} rows ({quarantined / checked:.1%}) of table "
        f"'{table}' broke the data contract; the limit is max_reject_rate="
        f"{limit:.1%}. Top reasons:"
    ]
    top = sorted(reasons.items(), key=lambda item: -item[1])[:3]
    for (reason, column), count in top:
        lines.append(
            f"  - {reason}{f' in column {column!r}' if column else ''}: {count} rows "
            f"({REASONS[reason]}), e.g.:"
        )
        shown = examples[(examples["reason"] == reason) & (examples["column"] == column)].head(2)
        for row in shown.itertuples():
            detail = f" [{row.detail}]" if row.detail else ""
            lines.append(f"      {row.source_file} row {row.row}{detail}: {row.original}")
    lines.append(f"All quarantined rows with their reasons: {quarantine_path}")
    lines.append(
        "What to do: fix the export upstream and re-run; if these rows are expected, "
        "raise max_reject_rate (they stay quarantined either way)."
    )
    return "\n".join(lines)
