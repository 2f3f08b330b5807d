"""`recsys import-movielens`: the MovieLens 100K files as the pipeline's raw tables.

MovieLens 100K (GroupLens, https://grouplens.org/datasets/movielens/100k/) may not
be redistributed, so it is never copied into this repository: point ``--src`` at
your copy. What the conversion does, and what MovieLens simply does not have:

- every rating is an impression at its timestamp; ``clicked`` = rating >= 4
  (the usual implicit-feedback reading); ``watch_seconds`` is 0 (no watch time);
- users: ``country`` from the zip code (five digits: US, otherwise the Canadian
  postal codes in the data: CA), ``device`` "web" (MovieLens was a web site),
  ``signup_ts`` the user's first rating; age, gender and occupation have no
  column in the raw contract and are left out;
- items: ``category`` the first genre flagged in ``u.item`` (in ``u.genre``
  order), ``creator_id`` unknown, ``duration_s`` 0 (unknown), ``upload_ts`` the
  item's first rating (when it entered MovieLens, as far as the data tells);
- user and item features: daily snapshots of the trailing 7-day counts,
  computed from the ratings the same way as for the synthetic data.

Next to the tables it writes ``schemas/`` (the curated schemas with MovieLens's
genres, countries and 1990s timestamps) and ``recsys.yaml``, the pipeline
parameters that fit the data (the whole seven months as the window, the last
``eval_days`` as eval), which ``recsys run --data`` picks up.
"""

import csv
import os
import shutil

import numpy as np
import pandas as pd
import yaml
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from recsys.app.generate import daily_snapshots
from recsys.app.local_run import DATA_CONFIG
from recsys.core.contracts import FEATURES_FILE, IMPRESSIONS, RAW_TABLES, UNKNOWN
from recsys.core.derived import DAY
from recsys.core.features import registry_path
from recsys.core.progress import log
from recsys.core.schemas import SCHEMA_DIR, required_columns, schema_path
from recsys.core.tables import write_raw_tables

ENCODING = "latin-1"  # u.item titles are ISO-8859-1
POSITIVE_RATING = 4
# Ratings of the last days form the eval split of `recsys run` (about 12% of them).
EVAL_DAYS = 28
# Where the adapted schemas (and the feature registry) go, inside the data directory.
DATA_SCHEMAS = "schemas"
# The schemas' timestamp floor is 2000-01-01; MovieLens 100K is from 1997-98.
TIMESTAMP_FLOOR = int(pd.Timestamp("1995-01-01", tz="UTC").timestamp())
REQUIRED_FILES = ("u.data", "u.user", "u.item", "u.genre")


def read_ratings(src: str) -> pd.DataFrame:
    """``u.data`` as user, item, rating, timestamp (all int)."""
    return pd.read_csv(
        os.path.join(src, "u.data"),
        sep="\t",
        header=None,
        names=["user", "item", "rating", "timestamp"],
        dtype=np.int64,
    )


def _check_source(src: str) -> None:
    missing = [name for name in REQUIRED_FILES if not os.path.isfile(os.path.join(src, name))]
    if missing:
        raise FileNotFoundError(
            f"import-movielens: {src} lacks {missing}; expected the MovieLens 100K layout "
            f"({', '.join(REQUIRED_FILES)}), e.g. the unzipped ml-100k.zip from "
            "https://grouplens.org/datasets/movielens/100k/"
        )


def _users(src: str, first_rating: pd.Series) -> pd.DataFrame:
    users = pd.read_csv(
        os.path.join(src, "u.user"),
        sep="|",
        header=None,
        encoding=ENCODING,
        names=["user", "age", "gender", "occupation", "zip"],
        dtype=str,
    )
    user = users["user"].astype(np.int64)
    return pd.DataFrame(
        {
            "user_id": "u" + users["user"],
            "country": np.where(users["zip"].str.fullmatch(r"\d{5}"), "US", "CA"),
            "device": "web",
            "signup_ts": first_rating.reindex(user).to_numpy(),
        }
    )


def _genres(src: str) -> list[str]:
    genres = pd.read_csv(
        os.path.join(src, "u.genre"),
        sep="|",
        header=None,
        names=["genre", "index"],
        encoding=ENCODING,
    ).dropna()
    return genres.sort_values("index")["genre"].tolist()


def _items(src: str, genres: list[str], first_rating: pd.Series) -> pd.DataFrame:
    columns = ["item", "title", "release_date", "video_release_date", "url", *genres]
    # QUOTE_NONE: some titles contain a double quote, which must not open a quoted field.
    items = pd.read_csv(
        os.path.join(src, "u.item"),
        sep="|",
        header=None,
        encoding=ENCODING,
        names=columns,
        dtype={"item": np.int64},
        quoting=csv.QUOTE_NONE,
    )
    flags = items[genres].to_numpy()
    # The first flagged genre; "unknown" (u.genre's first entry) only when none other is set.
    named = flags[:, 1:]
    category = np.where(named.any(axis=1), np.array(genres[1:])[named.argmax(axis=1)], genres[0])
    return pd.DataFrame(
        {
            "item_id": "m" + items["item"].astype(str),
            "category": category,
            "creator_id": UNKNOWN,
            "duration_s": 0.0,
            "upload_ts": first_rating.reindex(items["item"]).to_numpy(),
        }
    )


def movielens_schemas(genres: list[str], out_dir: str, curated_dir: str = "") -> str:
    """The curated schemas, adapted to MovieLens: its genres as the category domain,
    US/CA as countries, timestamps from 1995, an unknown (0) duration allowed."""
    os.makedirs(out_dir, exist_ok=True)
    names = [
        f.removesuffix(".schema.pbtxt")
        for f in os.listdir(curated_dir or SCHEMA_DIR)
        if f.endswith(".schema.pbtxt")
    ]
    for name in names:
        with open(schema_path(name, curated_dir)) as handle:
            schema = text_format.Parse(handle.read(), schema_pb2.Schema())
        for feature in schema.feature:
            if feature.name.endswith("_ts") and feature.HasField("int_domain"):
                feature.int_domain.min = TIMESTAMP_FLOOR
            elif feature.name == "category":
                del feature.string_domain.value[:]
                feature.string_domain.value.extend(genres)
            elif feature.name == "country":
                del feature.string_domain.value[:]
                feature.string_domain.value.extend(["US", "CA"])
            elif feature.name == "duration_s":
                feature.float_domain.min = 0.0
        with open(os.path.join(out_dir, f"{name}.schema.pbtxt"), "w") as handle:
            handle.write(
                f"# The curated {name} schema adapted to MovieLens 100K by "
                "recsys import-movielens (genres, US/CA, 1990s timestamps).\n"
            )
            handle.write(text_format.MessageToString(schema))
    # The features are MovieLens's too: the registry goes with its schemas.
    shutil.copyfile(registry_path(curated_dir), os.path.join(out_dir, FEATURES_FILE))
    return out_dir


def import_movielens(src: str, out: str) -> dict[str, int]:
    """Write the raw tables, ``schemas/`` and ``recsys.yaml`` under ``out``; return
    the row count of each table."""
    _check_source(src)
    ratings = read_ratings(src)
    if ratings.empty:
        raise ValueError(f"import-movielens: {os.path.join(src, 'u.data')} has no ratings")
    genres = _genres(src)
    first_by_user = ratings.groupby("user")["timestamp"].min()
    first_by_item = ratings.groupby("item")["timestamp"].min()
    users = _users(src, first_by_user)
    items = _items(src, genres, first_by_item)
    # Users or movies without ratings (none in ML-100K) count as present from the start.
    users["signup_ts"] = users["signup_ts"].fillna(ratings["timestamp"].min()).astype(np.int64)
    items["upload_ts"] = items["upload_ts"].fillna(ratings["timestamp"].min()).astype(np.int64)

    ratings = ratings.sort_values(["timestamp", "user", "item"], kind="stable", ignore_index=True)
    impressions = pd.DataFrame(
        {
            # A user rates a movie once, so (user, movie) identifies the event.
            "event_id": "r" + ratings["user"].astype(str) + "-" + ratings["item"].astype(str),
            "event_ts": ratings["timestamp"],
            "user_id": "u" + ratings["user"].astype(str),
            "item_id": "m" + ratings["item"].astype(str),
            "clicked": (ratings["rating"] >= POSITIVE_RATING).astype(np.int64),
            "watch_seconds": 0.0,
        }
    )
    first_day, last_day = (int(impressions["event_ts"].agg(f)) // DAY for f in ("min", "max"))
    start_ts, days = first_day * DAY, last_day - first_day + 1
    # Ratings of a user or movie absent from u.user / u.item are kept: ingest
    # quarantines them (unknown_user_id / unknown_item_id), so they are counted, not lost.
    listed = np.ones(len(impressions), dtype=bool)
    for entity, table, source in (("user", users, "u.user"), ("item", items, "u.item")):
        known = impressions[f"{entity}_id"].isin(table[f"{entity}_id"]).to_numpy()
        if not known.all():
            unlisted = impressions.loc[~known, f"{entity}_id"].unique()
            log(
                "import-movielens",
                f"{int((~known).sum())} rating(s) of {len(unlisted)} "
                f"{entity}(s) missing from {source} (e.g. {unlisted[0]}): kept; ingest will "
                f"quarantine them as unknown_{entity}_id",
            )
        listed &= known
    rated = impressions[listed]
    tables = {
        "impressions": impressions[required_columns(RAW_TABLES[IMPRESSIONS].schema)],
        "users": users,
        "items": items,
        "user_features": daily_snapshots(rated, "user", users["user_id"], days, start_ts),
        "item_features": daily_snapshots(rated, "item", items["item_id"], days, start_ts),
    }
    counts = write_raw_tables(tables, out)
    movielens_schemas(genres, os.path.join(out, DATA_SCHEMAS))
    with open(os.path.join(out, DATA_CONFIG), "w") as handle:
        handle.write(
            "# Pipeline parameters for MovieLens 100K, written by recsys import-movielens.\n"
            "# `recsys run --data <this dir>` reads them; --config overrides them.\n"
        )
        yaml.safe_dump(
            {"schema_dir": DATA_SCHEMAS, "lookback_days": days, "eval_days": EVAL_DAYS},
            handle,
            sort_keys=False,
        )
    return counts
