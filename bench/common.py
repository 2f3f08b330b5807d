"""Shared by the bench scripts: progress lines, the machine line, and running the
pipeline's own join and transform stage functions on a re-split of ingested data."""

import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pandas as pd  # noqa: E402

from components.features.features import join_features, transform  # noqa: E402
from recsys.data_check import JOINED, TABLES  # noqa: E402
from recsys.tables import write_dataset  # noqa: E402
from schemas import schema_path  # noqa: E402

DEFAULT_ML_100K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                               "data", "ml-100k")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    return (f"machine: {os.cpu_count()} cores, {platform.platform()}, Python "
            f"{platform.python_version()}")


def prepare_split(ingested: dict[str, str], schema_dir: str, as_of: int, work: str,
                  train: pd.DataFrame, evaluation: pd.DataFrame, history_length: int = 10,
                  eval_start: int | None = None) -> dict:
    """Examples (point-in-time join) and transformed data of one (train, eval) split
    of ingested tables, under ``work``; returns the paths. With ``eval_start``, also
    the item snapshot at that time (``eval_item_snapshot``)."""
    extra = ["eval_item_snapshot"] if eval_start is not None else []
    paths = {name: os.path.join(work, name) for name in
             JOINED + extra + ["train_events", "eval_events", "transform_graph",
                               "transformed_train", "transformed_eval"]}
    write_dataset(train, paths["train_events"])
    write_dataset(evaluation, paths["eval_events"])
    inputs = {name: ingested[name] for name in TABLES}
    inputs.update(train_events=paths["train_events"], eval_events=paths["eval_events"])
    join_features(inputs, as_of, schema_dir, {n: paths[n] for n in JOINED + extra},
                  history_length=history_length, eval_start=eval_start)
    transform(paths["train_examples"], paths["eval_examples"],
              schema_path("examples", schema_dir), paths["transform_graph"],
              {"train": paths["transformed_train"], "eval": paths["transformed_eval"]},
              os.path.join(work, "tft_tmp"))
    return paths
