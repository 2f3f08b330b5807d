"""Table and file I/O: raw tables as the user brings them, datasets between stages.

Raw data (what you bring): one table per ``contracts.RAW_TABLES`` entry, each either
``<name>.parquet``, ``<name>.csv``, or a ``<name>/`` directory of such files; the
columns each needs are the required ones of its curated schema.
CSV may be separated by commas, semicolons, tabs or '|' and start with a
byte-order mark. Timestamp columns (``*_ts``) may be Parquet timestamps, ISO-8601
text or Unix epoch numbers (seconds or finer, told apart by magnitude); ingest
turns them all into int64 Unix seconds (UTC), which is what every later stage
(TFDV, TFT, the models) reads.

Between stages a dataset is a directory of ``part-*.parquet`` files, so Beam
can read and write it in shards.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from recsys.core import storage
from recsys.core.contracts import RAW_TABLES, TIMESTAMP_SUFFIX
from recsys.core.schemas import required_columns


class DataError(ValueError):
    """Input data that cannot be used as given; the message says where and what to do."""


def find_table(data_root: str, name: str) -> list[str]:
    """Files that hold raw table ``name`` under ``data_root``."""
    candidates = [
        storage.join(data_root, f"{name}.parquet"),
        storage.join(data_root, f"{name}.csv"),
    ]
    files = [path for path in candidates if storage.isfile(path)]
    directory = storage.join(data_root, name)
    if storage.isdir(directory):
        files += storage.glob(storage.join(directory, "*.parquet"))
        files += storage.glob(storage.join(directory, "*.csv"))
    if not files:
        raise DataError(
            f"raw table '{name}' not found under {data_root}: expected {name}.parquet, "
            f"{name}.csv or a {name}/ directory of such files "
            f"(see README, 'Bring your own data')."
        )
    return files


UTF8_BOM = b"\xef\xbb\xbf"


@dataclass
class RawFile:
    """One raw file as read: CSV values as text, Parquet values as stored."""

    path: str
    frame: pd.DataFrame
    missing: dict[str, np.ndarray]  # column -> rows with no value (null / empty cell)
    undecodable: np.ndarray  # rows with text that is not valid in the declared encoding


def read_raw_file(path: str, encoding: str = "utf-8") -> RawFile:
    if not path.endswith(".csv"):
        table = storage.read_parquet(path)
        missing = {name: table.column(name).is_null().to_numpy() for name in table.column_names}
        return RawFile(path, table.to_pandas(), missing, np.zeros(table.num_rows, dtype=bool))
    is_utf8 = encoding.replace("_", "-").lower() in ("utf-8", "utf8")
    # Latin-1 maps every byte to a character, so reading with it never fails and
    # loses nothing; valid UTF-8 is then recovered value by value below.
    with storage.open(path) as handle:
        frame = pd.read_csv(
            handle,
            sep=csv_separator(handle, path),
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding="latin-1" if is_utf8 else encoding,
        )
    # Spreadsheets write a byte-order mark before the header (read as Latin-1 or not).
    first = str(frame.columns[0])
    for mark in (UTF8_BOM.decode("latin-1"), UTF8_BOM.decode("utf-8")):
        first = first.removeprefix(mark)
    frame = frame.rename(columns={frame.columns[0]: first})
    undecodable = np.zeros(len(frame), dtype=bool)
    if is_utf8:
        for column in frame.columns:
            values = frame[column]
            if not values.notna().any():  # no text at all (a header-only file)
                continue
            non_ascii = ~pc.string_is_ascii(pa.array(values.fillna(""))).to_numpy(
                zero_copy_only=False
            )
            if not non_ascii.any():
                continue
            recovered, bad = zip(*(_utf8(text) for text in values[non_ascii]), strict=True)
            frame.loc[non_ascii, column] = list(recovered)
            undecodable[np.flatnonzero(non_ascii)[np.array(bad)]] = True
    missing = {name: frame[name].isna().to_numpy() for name in frame.columns}
    return RawFile(path, frame, missing, undecodable)


def csv_separator(handle, path: str) -> str:
    """The separator of the CSV open in ``handle`` (binary, left at its start), read off
    its header line: a comma unless the header has none and splits on ';'
    (spreadsheets in many locales), a tab or '|'. An empty file is an error here,
    before pandas reports it without the file's name (``path``)."""
    header = handle.readline()
    handle.seek(0)
    if not header.strip():
        raise DataError(
            f"{path}: the file is empty, not even a header row. Export it with a header "
            "naming the columns (README, 'Bring your own data')."
        )
    if b"," in header:
        return ","
    counts = {sep: header.count(sep.encode()) for sep in (";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _utf8(latin1_text: str) -> tuple[str, bool]:
    """(the text as UTF-8 if its bytes are UTF-8, else unchanged; whether it was not)."""
    try:
        return latin1_text.encode("latin-1").decode("utf-8"), False
    except UnicodeDecodeError:
        return latin1_text, True


def read_raw_table(data_root: str, name: str, schema_dir: str = "") -> pd.DataFrame:
    """Read a raw table, check its required columns, normalise ``*_ts`` to Unix seconds."""
    table = RAW_TABLES[name]
    required = required_columns(table.schema, schema_dir, table.environment)
    frames = []
    for path in find_table(data_root, name):
        if path.endswith(".csv"):
            with storage.open(path) as handle:
                frame = pd.read_csv(
                    handle,
                    sep=csv_separator(handle, path),
                    encoding="utf-8-sig",
                    encoding_errors="replace",
                )
        else:
            frame = storage.read_parquet(path).to_pandas()
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise DataError(
                f"{path}: missing required column(s) {missing} for table '{name}'; "
                f"found {list(frame.columns)}. Rename or add them (README, 'Bring your own data')."
            )
        for column in [c for c in frame.columns if c.endswith(TIMESTAMP_SUFFIX)]:
            frame[column] = to_unix_seconds(frame[column], path, column)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


# ISO-8601 dates and times (date, optional time, optional zone). Only these are read
# as text: "01/05/2026" is 1 May or 5 January depending on who exported it.
ISO_8601 = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?\s*(Z|[+-]\d{2}(:?\d{2})?)?$"
# Unix epoch units, finest first: (name, divisor to seconds, the median from which a
# column is read in the unit when it is not declared; past the year 5000 in the next
# coarser unit). A declared unit (``recsys import``'s timestamp_unit) uses the key.
EPOCH_UNITS = {
    "ns": ("nanoseconds", 1e9, 1e17),
    "us": ("microseconds", 1e6, 1e14),
    "ms": ("milliseconds", 1e3, 1e11),
    "s": ("seconds", 1.0, 0.0),
}
# The unit of timestamps that are ISO-8601 text only (numbers are not read as epochs).
ISO = "iso"


def epoch_unit(numbers: pd.Series) -> str:
    """The unit (a key of EPOCH_UNITS) of a column of Unix epoch numbers, from its
    median."""
    numbers = numbers.dropna()
    median = numbers.abs().median() if len(numbers) else 0.0
    return next(unit for unit, (_, _, bound) in EPOCH_UNITS.items() if median >= bound)


def parse_timestamps(values: pd.Series, unit: str = "") -> pd.Series:
    """Unix seconds (float; NaN where empty or unparseable) from Parquet timestamps,
    Unix epoch numbers (or numeric text) in seconds, or, told apart by magnitude,
    milli-, micro- or nanoseconds (the unit read is in ``.attrs["unit"]``), or
    ISO-8601 text, read as UTC when it names no zone. ``unit``, when given, is the
    declared one: a key of EPOCH_UNITS, or ISO for text only."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = (
            values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        )
        seconds = stamps.astype("int64") // 1_000_000_000
        return seconds.astype(float).where(stamps.notna())
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    if unit == ISO:
        numeric[:] = np.nan
        name = "ISO-8601 text"
    else:
        name, divisor, _ = EPOCH_UNITS[unit or epoch_unit(numeric)]
        numeric = numeric / divisor
    numeric.attrs["unit"] = name
    text = values[numeric.isna() & values.notna()].astype(str).str.strip()
    iso = text[text.str.match(ISO_8601)]
    if len(iso):
        parsed = pd.to_datetime(iso, utc=True, errors="coerce")
        seconds = parsed.astype("int64") // 1_000_000_000
        numeric.loc[iso.index] = seconds.astype(float).where(parsed.notna())
    return numeric


def ids_as_text(values: pd.Series, missing: np.ndarray | None = None) -> pd.Series:
    """Ids (any text column) as ``str`` whatever the file stored, so that an id is the
    same key in every table: Parquet ``int64`` 16 and CSV "16" are both "16", and so
    is ``float64`` 16.0, which is what an integer column with a null becomes in a
    pandas export. None where ``missing`` (default: where null)."""
    missing = values.isna().to_numpy() if missing is None else missing
    present = values[~missing]
    if pd.api.types.is_float_dtype(present) and np.array_equal(present, np.floor(present)):
        present = present.astype("int64")
    text = pd.Series(None, index=values.index, dtype=object)
    text[~missing] = present.astype(str).to_numpy(dtype=object)
    return text


def to_unix_seconds(values: pd.Series, path: str, column: str) -> pd.Series:
    """Timestamps of any common encoding as int64 Unix seconds (UTC); every row needs one."""
    seconds = parse_timestamps(values)
    bad = seconds.isna() & values.notna()
    if bad.any():
        examples = values[bad].astype(str).head(3).tolist()
        raise DataError(
            f"{path}: column '{column}' has {int(bad.sum())} value(s) that are not "
            f"timestamps, e.g. {examples}. Use ISO-8601 (2026-01-31T18:00:00Z), Unix "
            "epoch numbers or Parquet timestamps."
        )
    if seconds.isna().any():
        raise DataError(
            f"{path}: column '{column}' has {int(seconds.isna().sum())} empty timestamp(s); "
            "every row needs one."
        )
    return seconds.astype("int64")


def write_raw_tables(tables: dict[str, pd.DataFrame], out: str) -> dict[str, int]:
    """Raw tables as ``out/<name>.parquet`` with ``*_ts`` columns (Unix seconds) as
    Parquet timestamps; returns each table's row count."""
    for name, frame in tables.items():
        frame = frame.copy()
        for column in [c for c in frame.columns if c.endswith(TIMESTAMP_SUFFIX)]:
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        storage.write_parquet(table, storage.join(out, f"{name}.parquet"))
    return {name: len(frame) for name, frame in tables.items()}


def write_dataset(data: pd.DataFrame | pa.Table, directory: str) -> str:
    """Store a dataset as ``directory/part-00000.parquet``."""
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    path = storage.join(directory, "part-00000.parquet")
    storage.write_parquet(table, path)
    return path


def dataset_pattern(directory: str) -> str:
    return storage.join(directory, "*.parquet")


def read_dataset_table(directory: str, columns: list[str] | None = None) -> pa.Table:
    files = storage.glob(dataset_pattern(directory))
    if not files:
        raise DataError(f"no Parquet files in dataset directory {directory}")
    return pa.concat_tables([storage.read_parquet(f, columns=columns) for f in files])


def read_dataset(directory: str, columns: list[str] | None = None) -> pd.DataFrame:
    return read_dataset_table(directory, columns).to_pandas()
