"""`recsys import --preset movielens-100k`: MovieLens 100K through the generic importer.

MovieLens 100K (GroupLens, https://grouplens.org/datasets/movielens/100k/) may not
be redistributed, so it is never copied into this repository: point ``--src`` at
your copy. The preset only reads the files' own layout (tab-separated ``u.data``
without a header, ``|``-separated Latin-1 ``u.item`` with one flag column per genre,
``u.user``) and hands them to ``recsys.app.importer`` with this mapping:

- interactions: every rating at its timestamp (Unix seconds); the label is
  rating >= 4 (the usual implicit-feedback reading); no watch time;
- items: the genres, in ``u.genre`` order, as a multi-valued category (the first one
  is the primary value); no creator, duration or upload time, so those features
  and their re-ranking rules are switched off;
- users: age, gender and occupation as attributes (the zip code is left out).

Nothing else is invented: the trailing user and item aggregates are derived from the
ratings by ingest, point in time.
"""

import csv
import os

import numpy as np
import pandas as pd

from recsys.app.importer import Imported, import_data

ENCODING = "latin-1"  # u.item titles are ISO-8859-1
POSITIVE_RATING = 4
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


def _genres(src: str) -> list[str]:
    genres = pd.read_csv(
        os.path.join(src, "u.genre"),
        sep="|",
        header=None,
        names=["genre", "index"],
        encoding=ENCODING,
    ).dropna()
    return genres.sort_values("index")["genre"].tolist()


def _items(src: str, genres: list[str]) -> pd.DataFrame:
    """``u.item`` as item and its genres, "|"-joined in ``u.genre`` order; "unknown"
    (u.genre's first entry) only when no other genre is flagged."""
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
    flags = items[genres[1:]].to_numpy().astype(bool)
    names = np.array(genres[1:], dtype=object)
    joined = pd.Series(["|".join(names[row]) for row in flags])  # 1,682 short rows
    return pd.DataFrame({"item": items["item"], "genres": joined.where(joined != "", genres[0])})


def _users(src: str) -> pd.DataFrame:
    return pd.read_csv(
        os.path.join(src, "u.user"),
        sep="|",
        header=None,
        encoding=ENCODING,
        names=["user", "age", "gender", "occupation", "zip"],
        dtype={"user": np.int64, "age": np.int64, "zip": str},
    ).drop(columns="zip")


def movielens_mapping(src: str) -> dict:
    """The generic importer's mapping of the MovieLens 100K files in ``src``."""
    _check_source(src)
    ratings = read_ratings(src)
    if ratings.empty:
        raise ValueError(f"import-movielens: {os.path.join(src, 'u.data')} has no ratings")
    return {
        "interactions": {
            "frame": ratings,
            "path": os.path.join(src, "u.data"),
            "user": "user",
            "item": "item",
            "timestamp": "timestamp",
            "timestamp_unit": "s",
            "label": f"rating >= {POSITIVE_RATING}",
        },
        "items": {
            "frame": _items(src, _genres(src)),
            "path": os.path.join(src, "u.item"),
            "id": "item",
            "separator": "|",
            "category": "genres",
        },
        "users": {
            "frame": _users(src),
            "path": os.path.join(src, "u.user"),
            "id": "user",
            "attributes": ["age", "gender", "occupation"],
        },
    }


def import_movielens(src: str, out: str) -> Imported:
    """The raw tables, ``schemas/`` and ``recsys.yaml`` of MovieLens 100K under ``out``."""
    return import_data(movielens_mapping(src), out)
