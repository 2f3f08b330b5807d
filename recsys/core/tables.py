"""Table and file I/O: raw tables as the user brings them, datasets between stages.

Raw data (what you bring): one table per ``contracts.RAW_TABLES`` entry, each either
``<name>.parquet``, ``<name>.csv``, or a ``<name>/`` directory of such files; the
columns each needs are the required ones of its curated schema.
Timestamp columns (``*_ts``) may be Parquet timestamps, ISO-8601 strings or
Unix seconds; ingest turns them all into int64 Unix seconds (UTC), which is
what every later stage (TFDV, TFT, the models) reads.

Between stages a dataset is a directory of ``part-*.parquet`` files, so Beam
can read and write it in shards.
"""

import glob
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recsys.core.contracts import RAW_TABLES, TIMESTAMP_SUFFIX
from recsys.core.schemas import required_columns


class DataError(ValueError):
    """Input data that cannot be used as given; the message says where and what to do."""


def find_table(data_root: str, name: str) -> list[str]:
    """Files that hold raw table ``name`` under ``data_root``."""
    candidates = [
        os.path.join(data_root, f"{name}.parquet"),
        os.path.join(data_root, f"{name}.csv"),
    ]
    files = [path for path in candidates if os.path.isfile(path)]
    directory = os.path.join(data_root, name)
    if os.path.isdir(directory):
        files += sorted(glob.glob(os.path.join(directory, "*.parquet")))
        files += sorted(glob.glob(os.path.join(directory, "*.csv")))
    if not files:
        raise DataError(
            f"raw table '{name}' not found under {data_root}: expected {name}.parquet, "
            f"{name}.csv or a {name}/ directory of such files "
            f"(see README, 'Bring your own data')."
        )
    return files


def read_raw_table(data_root: str, name: str, schema_dir: str = "") -> pd.DataFrame:
    """Read a raw table, check its required columns, normalise ``*_ts`` to Unix seconds."""
    table = RAW_TABLES[name]
    required = required_columns(table.schema, schema_dir, table.environment)
    frames = []
    for path in find_table(data_root, name):
        if path.endswith(".csv"):
            frame = pd.read_csv(path, encoding_errors="replace")
        else:
            frame = pq.read_table(path).to_pandas()
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


def parse_timestamps(values: pd.Series) -> pd.Series:
    """Unix seconds (float; NaN where empty or unparseable) from Parquet timestamps,
    Unix seconds (numbers or numeric text) or date/time text, read as UTC when naive."""
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = (
            values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        )
        seconds = stamps.astype("int64") // 1_000_000_000
        return seconds.astype(float).where(stamps.notna())
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    text = values[numeric.isna() & values.notna()]
    if len(text):
        parsed = pd.to_datetime(text.astype(str), utc=True, errors="coerce")
        seconds = parsed.astype("int64") // 1_000_000_000
        numeric.loc[text.index] = seconds.astype(float).where(parsed.notna())
    return numeric


def to_unix_seconds(values: pd.Series, path: str, column: str) -> pd.Series:
    """Timestamps of any common encoding as int64 Unix seconds (UTC); every row needs one."""
    seconds = parse_timestamps(values)
    bad = seconds.isna() & values.notna()
    if bad.any():
        examples = values[bad].astype(str).head(3).tolist()
        raise DataError(
            f"{path}: column '{column}' has {int(bad.sum())} value(s) that are not "
            f"timestamps, e.g. {examples}. Use ISO-8601, Unix seconds or Parquet timestamps."
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
    os.makedirs(out, exist_ok=True)
    for name, frame in tables.items():
        frame = frame.copy()
        for column in [c for c in frame.columns if c.endswith(TIMESTAMP_SUFFIX)]:
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        frame.to_parquet(os.path.join(out, f"{name}.parquet"), index=False)
    return {name: len(frame) for name, frame in tables.items()}


def write_dataset(data: pd.DataFrame | pa.Table, directory: str) -> str:
    """Store a dataset as ``directory/part-00000.parquet``."""
    os.makedirs(directory, exist_ok=True)
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    path = os.path.join(directory, "part-00000.parquet")
    pq.write_table(table, path)
    return path


def dataset_pattern(directory: str) -> str:
    return os.path.join(directory, "*.parquet")


def read_dataset_table(directory: str, columns: list[str] | None = None) -> pa.Table:
    files = sorted(glob.glob(dataset_pattern(directory)))
    if not files:
        raise DataError(f"no Parquet files in dataset directory {directory}")
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files])


def read_dataset(directory: str, columns: list[str] | None = None) -> pd.DataFrame:
    return read_dataset_table(directory, columns).to_pandas()
