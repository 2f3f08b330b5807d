"""Retrieval quality on MovieLens 100K: popularity, implicit ALS, EASE and this
two-tower, in one run, on the same splits; then two-tower training time on
100k-5M synthetic events.

    .venv/bin/python bench/retrieval_quality.py                      # both parts, ~30 min
    .venv/bin/python bench/retrieval_quality.py --parts quality      # MovieLens only
    .venv/bin/python bench/retrieval_quality.py --parts scaling --sizes 100k 1M

Protocol (docs/benchmarks.md has the results):
- ``recsys import-movielens`` converts the data, ingest checks it (the rating of
  the one movie missing from this copy's u.item is quarantined there);
  positives are ratings >= 4.
- Splits: per user (each user's last 20% of ratings by time are test) and global
  (the last 20% of all ratings by time; only users seen in training). For
  tuning, the same rule carves a validation split out of training.
- Every method ranks the whole catalog for each test user, with the user's
  training items (every rating, any value) masked; test positives are the
  user's test ratings >= 4. Recall@10/50/100 and NDCG@10 (binary relevance).
- Popularity: count of training positives. ALS (``implicit``): trained on
  training positives; factors, regularization and alpha chosen on the validation
  split by Recall@50, then refit on the whole training split. EASE (Steck 2019,
  closed-form item-item weights): its L2 regularization chosen the same way. Two-tower: the
  pipeline's own stage functions (point-in-time join with engagement history,
  tensorflow-transform, ``train_retrieval``); the join's history length (10 or
  50 clicked items), temperature, learning rate and the history encoder (a bag
  or ordered) chosen on the validation split by the same
  Recall@50, the number of epochs by early stopping there; then retrained on the
  whole training split for that many epochs (early stopping off: the test split
  is passed as the trainer's eval data only to report a loss). Each test user is
  queried with the features of their first test rating, as serving would have seen
  them then.
"""

import argparse
import itertools
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402

from bench.common import DEFAULT_ML_100K, ingest, log, machine, prepare_split  # noqa: E402
from recsys.app.movielens import import_movielens  # noqa: E402
from recsys.components.evaluate.data import first_examples  # noqa: E402
from recsys.components.evaluate.metrics import (  # noqa: E402
    hits_and_counts,
    list_quality,
    ndcg_per_user,
    rank_catalog,
    recall_per_user,
)
from recsys.components.evaluate.models import call_in_batches, serving_fn  # noqa: E402
from recsys.components.train_retrieval import train_retrieval  # noqa: E402
from recsys.components.train_retrieval.config import RetrievalConfig  # noqa: E402
from recsys.core.contracts import QUERY_EMBEDDING  # noqa: E402
from recsys.core.features import load_registry  # noqa: E402
from recsys.core.tables import read_dataset  # noqa: E402

KS = [10, 50, 100]
TEST_FRACTION = 0.2
# Wide enough that the chosen values are inside the grid, not on its edge.
ALS_GRID = {
    "factors": [16, 64, 256, 512],
    "regularization": [1.0, 10.0, 30.0, 100.0],
    "alpha": [0.5, 1.0, 2.0, 5.0, 10.0],
}
ALS_ITERATIONS = 20
# EASE's one parameter, the L2 weight on the item-item matrix; the paper's best for
# MovieLens 20M was 500, and smaller catalogs want less.
EASE_GRID = [10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0]
TWO_TOWER = dict(
    embedding_dim=64,
    epochs=30,
    batch_size=256,
    learning_rate=0.1,
    temperature=0.1,
    top_k=100,
    early_stopping_patience=3,
    seed=42,
)
TWO_TOWER_GRID = {
    "temperature": [0.05, 0.1, 0.2],
    "learning_rate": [0.05, 0.1],
    # The engagement history as a bag, or ordered (positions and self-attention).
    "history_encoder": ["mean", "attention"],
}
# The join's history_length: clicked items in each example's history (the pipeline's
# default and the examples schema's maximum), each a join and transform of its own.
HISTORY_LENGTHS = [10, 50]
SIZES = {"100k": 100_000, "1M": 1_000_000, "5M": 5_000_000}


# ---- splits -------------------------------------------------------------------------


def _ordered(events: pd.DataFrame) -> pd.DataFrame:
    return events.sort_values(["event_ts", "event_id"], kind="stable", ignore_index=True)


def per_user_split(events: pd.DataFrame, fraction: float = TEST_FRACTION):
    """(train, test): each user's last ``fraction`` of events by time are test."""
    events = _ordered(events)
    position = events.groupby("user_id").cumcount()
    size = events.groupby("user_id")["event_id"].transform("size")
    is_test = position >= size - np.round(fraction * size).astype(int)
    return events[~is_test], events[is_test]


def global_split(events: pd.DataFrame, fraction: float = TEST_FRACTION):
    """(train, test): the last ``fraction`` of all events by time are test, for
    users that also have training events."""
    events = _ordered(events)
    cut = int(round(len(events) * (1 - fraction)))
    train, test = events.iloc[:cut], events.iloc[cut:]
    return train, test[test["user_id"].isin(train["user_id"])]


# ---- evaluation ---------------------------------------------------------------------


def task(train: pd.DataFrame, test: pd.DataFrame):
    """(users, positives, masked): test users with at least one positive new to
    them, their positives, and every (user, item) of training to mask."""
    masked = train[["user_id", "item_id"]].drop_duplicates()
    clicked = test.loc[test["clicked"] == 1, ["user_id", "item_id"]].drop_duplicates()
    fresh = clicked.merge(masked, how="left", indicator=True)
    positives = fresh.loc[fresh["_merge"] == "left_only", ["user_id", "item_id"]]
    return np.sort(positives["user_id"].unique()), positives, masked


def score(scores: np.ndarray, users, item_ids, positives, masked) -> dict:
    top = rank_catalog(scores, users, item_ids, masked, max(KS))
    metrics = list_quality(top, users, item_ids, positives, KS)["all"].metrics()
    hits, n_positives = hits_and_counts(top, users, item_ids, positives)
    return {
        **metrics,
        "users": int(len(users)),
        "per_user": {
            "recall_at_50": recall_per_user(hits, n_positives, 50),
            "ndcg_at_10": ndcg_per_user(hits, n_positives, 10),
        },
    }


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean per-user difference a - b and its 95% normal-approximation half-width:
    how far apart two methods are, given how much users vary."""
    difference = a - b
    return float(difference.mean()), float(1.96 * difference.std(ddof=1) / np.sqrt(len(a)))


def popularity_scores(train: pd.DataFrame, users, item_ids) -> np.ndarray:
    counts = train.loc[train["clicked"] == 1, "item_id"].value_counts()
    popular = counts.reindex(item_ids, fill_value=0).to_numpy(dtype=np.float64)
    return np.broadcast_to(popular, (len(users), len(item_ids)))


# ---- ALS ----------------------------------------------------------------------------


def als_scores(
    train: pd.DataFrame, users, item_ids, factors: int, regularization: float, alpha: float
) -> np.ndarray:
    from implicit.cpu.als import AlternatingLeastSquares

    clicks = train[train["clicked"] == 1]
    all_users = pd.Index(np.union1d(users, clicks["user_id"].unique()))
    rows = all_users.get_indexer(clicks["user_id"])
    cols = pd.Index(item_ids).get_indexer(clicks["item_id"])
    keep = cols >= 0
    matrix = sp.csr_matrix(
        (np.ones(keep.sum(), dtype=np.float32), (rows[keep], cols[keep])),
        shape=(len(all_users), len(item_ids)),
    )
    model = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=alpha,
        iterations=ALS_ITERATIONS,
        random_state=42,
        calculate_training_loss=False,
    )
    model.fit(matrix, show_progress=False)
    return model.user_factors[all_users.get_indexer(users)] @ model.item_factors.T


def tune_als(fit: pd.DataFrame, validation: pd.DataFrame, item_ids) -> tuple[dict, float]:
    users, positives, masked = task(fit, validation)
    best, best_recall = None, -1.0
    for values in itertools.product(*ALS_GRID.values()):
        params = dict(zip(ALS_GRID, values, strict=True))
        recall = score(
            als_scores(fit, users, item_ids, **params), users, item_ids, positives, masked
        )["recall_at_50"]
        if recall > best_recall:
            best, best_recall = params, recall
    return best, best_recall


# ---- EASE ---------------------------------------------------------------------------


def ease_scores(train: pd.DataFrame, users, item_ids, regularization: float) -> np.ndarray:
    """EASE (Steck, "Embarrassingly Shallow Autoencoders", 2019) on the training
    positives: B = I - P diag(1 / diag(P)) with P = (X'X + regularization I)^-1, so
    diag(B) = 0; a user's scores are their positives' rows of B summed. Written
    here because no library in the lock has it: the closed form is these lines."""
    clicks = train.loc[train["clicked"] == 1, ["user_id", "item_id"]].drop_duplicates()
    all_users = pd.Index(np.union1d(users, clicks["user_id"].unique()))
    rows = all_users.get_indexer(clicks["user_id"])
    cols = pd.Index(item_ids).get_indexer(clicks["item_id"])
    keep = cols >= 0
    interactions = sp.csr_matrix(
        (np.ones(keep.sum()), (rows[keep], cols[keep])), shape=(len(all_users), len(item_ids))
    )
    gram = (interactions.T @ interactions).toarray()
    gram[np.diag_indices_from(gram)] += regularization
    inverse = np.linalg.inv(gram)
    weights = -inverse / np.diag(inverse)
    np.fill_diagonal(weights, 0.0)
    return np.asarray(interactions[all_users.get_indexer(users)] @ weights)


def tune_ease(fit: pd.DataFrame, validation: pd.DataFrame, item_ids) -> tuple[dict, float]:
    users, positives, masked = task(fit, validation)
    best, best_recall = None, -1.0
    for regularization in EASE_GRID:
        recall = score(
            ease_scores(fit, users, item_ids, regularization), users, item_ids, positives, masked
        )["recall_at_50"]
        if recall > best_recall:
            best, best_recall = {"regularization": regularization}, recall
    return best, best_recall


# ---- two-tower through the pipeline's stage functions --------------------------------


class Pipeline:
    """The ingested tables of one dataset, re-split, run through join and
    transform once per split, then train_retrieval and export per config."""

    def __init__(self, ingested, schema_dir: str, root: str):
        self.ingested, self.schema_dir, self.root = ingested, schema_dir, root
        self.registry = load_registry(schema_dir)
        self.runs = 0

    def prepare(
        self, train: pd.DataFrame, evaluation: pd.DataFrame, history_length: int | None = None
    ) -> dict:
        """Examples and transformed data of one (train, eval) split, with the join's
        ``history_length`` (default: the pipeline's); returns paths."""
        self.runs += 1
        join = {} if history_length is None else {"history_length": history_length}
        return prepare_split(
            self.ingested,
            os.path.join(self.root, f"split{self.runs}"),
            train,
            evaluation,
            schema_dir=self.schema_dir,
            **join,
        )

    def train(self, paths: dict, config: RetrievalConfig, name: str):
        """(paths with the exported models under ``name``, training metrics)."""
        model, metrics = train_retrieval.train(
            paths["transformed_train"],
            paths["transformed_eval"],
            paths["transform_graph"],
            config,
            self.registry,
        )
        models = {
            kind: os.path.join(os.path.dirname(paths["train_events"]), name, kind)
            for kind in ("retrieval_model", "query_model", "item_embeddings")
        }
        train_retrieval.export(
            model,
            paths["transform_graph"],
            paths["item_snapshot"],
            config,
            models["retrieval_model"],
            models["query_model"],
            models["item_embeddings"],
            registry=self.registry,
        )
        return {**paths, **models}, metrics


def two_tower_scores(paths: dict, users, item_ids) -> np.ndarray:
    """Each user queried with the features of their first eval event."""
    first = first_examples(read_dataset(paths["eval_examples"]), users)
    queries = call_in_batches(serving_fn(paths["query_model"]), first, QUERY_EMBEDDING)
    table = read_dataset(paths["item_embeddings"]).set_index("item_id")
    items = np.stack(table["embedding"].reindex(item_ids).to_numpy())
    return queries @ items.T


def tune_two_tower(
    pipeline: Pipeline, fit: pd.DataFrame, validation: pd.DataFrame, item_ids
) -> tuple[dict, dict]:
    """The point of HISTORY_LENGTHS x TWO_TOWER_GRID with the best validation
    Recall@50 (the same measure as ALS's tuning), each trained with early stopping on
    the validation split."""
    users, positives, masked = task(fit, validation)
    best, best_tuning = None, {"recall_at_50": -1.0}
    points = itertools.product(HISTORY_LENGTHS, itertools.product(*TWO_TOWER_GRID.values()))
    paths = {}
    for number, (history_length, values) in enumerate(points):
        if history_length not in paths:
            paths[history_length] = pipeline.prepare(fit, validation, history_length)
        params = dict(zip(TWO_TOWER_GRID, values, strict=True))
        config = RetrievalConfig(**{**TWO_TOWER, **params})
        models, metrics = pipeline.train(paths[history_length], config, f"tune{number}")
        recall = score(
            two_tower_scores(models, users, item_ids), users, item_ids, positives, masked
        )["recall_at_50"]
        if recall > best_tuning["recall_at_50"]:
            best, best_tuning = (
                {"history_length": history_length, **params},
                {"recall_at_50": recall, "best_epoch": metrics["best_epoch"]},
            )
    return best, best_tuning


def quality(src: str, root: str) -> dict:
    raw = os.path.join(root, "raw")
    import_movielens(src, raw)
    schema_dir = os.path.join(raw, "schemas")
    ingested = ingest(
        raw, os.path.join(root, "ingested"), lookback_days=400, eval_days=1, schema_dir=schema_dir
    )
    counts = ingested.artifact("ingest", "ingest_metrics").metadata
    events = pd.concat(
        [
            read_dataset(ingested.artifact("ingest", name).path)
            for name in ("train_events", "eval_events")
        ],
        ignore_index=True,
    )
    item_ids = (
        read_dataset(ingested.artifact("ingest", "items").path)["item_id"].astype(str).to_numpy()
    )
    log(
        f"MovieLens 100K: {len(events)} ratings ({counts['quarantined']} quarantined), "
        f"{events['user_id'].nunique()} users, {len(item_ids)} catalog items"
    )
    pipeline = Pipeline(ingested, schema_dir, os.path.join(root, "two_tower"))

    results = {}
    for split_name, split in (("per_user", per_user_split), ("global", global_split)):
        train, test = split(events)
        fit, validation = split(train)
        users, positives, masked = task(train, test)
        log(f"{split_name}: {len(train)} train / {len(test)} test ratings, {len(users)} users")
        table = {
            "popularity": score(
                popularity_scores(train, users, item_ids), users, item_ids, positives, masked
            )
        }

        started = time.monotonic()
        params, val_recall = tune_als(fit, validation, item_ids)
        table["implicit ALS"] = score(
            als_scores(train, users, item_ids, **params), users, item_ids, positives, masked
        )
        table["implicit ALS"]["chosen"] = {**params, "validation_recall_at_50": val_recall}
        log(f"{split_name}: ALS tuned and fitted in {time.monotonic() - started:.0f}s: {params}")

        started = time.monotonic()
        params, val_recall = tune_ease(fit, validation, item_ids)
        table["EASE"] = score(
            ease_scores(train, users, item_ids, **params), users, item_ids, positives, masked
        )
        table["EASE"]["chosen"] = {**params, "validation_recall_at_50": val_recall}
        log(f"{split_name}: EASE tuned and fitted in {time.monotonic() - started:.0f}s: {params}")

        started = time.monotonic()
        params, tuning = tune_two_tower(pipeline, fit, validation, item_ids)
        model_params = {name: value for name, value in params.items() if name != "history_length"}
        final_config = RetrievalConfig(
            **{
                **TWO_TOWER,
                **model_params,
                "epochs": tuning["best_epoch"],
                "early_stopping_patience": 0,
            }
        )
        paths, metrics = pipeline.train(
            pipeline.prepare(train, test, params["history_length"]), final_config, "final"
        )
        table["two-tower"] = score(
            two_tower_scores(paths, users, item_ids), users, item_ids, positives, masked
        )
        table["two-tower"]["chosen"] = {
            **params,
            "epochs": tuning["best_epoch"],
            "validation_recall_at_50": tuning["recall_at_50"],
        }
        table["two-tower"]["train_seconds"] = metrics["train_seconds"]
        log(
            f"{split_name}: two-tower tuned and trained in {time.monotonic() - started:.0f}s: "
            f"{params}, {tuning['best_epoch']} epochs"
        )
        per_user = {method: table[method].pop("per_user") for method in table}
        table["two-tower"]["differences"] = {
            f"{metric} minus {peer}": paired_difference(
                per_user["two-tower"][metric], per_user[peer][metric]
            )
            for peer in ("implicit ALS", "EASE")
            for metric in ("recall_at_50", "ndcg_at_10")
        }
        results[split_name] = table
    return results


def scaling(sizes: list[str], root: str) -> list[dict]:
    """Two-tower training time on synthetic data of each size (events): two epochs
    with the pipeline's default config, including the first epoch's graph tracing
    and the validation recall after each epoch."""
    from recsys.app.generate import generate

    rows = []
    for size in sizes:
        events = SIZES[size]
        users = max(events // (4 * 14), 2)
        data = os.path.join(root, f"synthetic_{size}")
        # A fixed catalog: the generator holds a users x items affinity matrix.
        generate(data, users=users, items=2000, days=14)
        ingested = ingest(data, os.path.join(data, "ingested"), lookback_days=14, eval_days=3)
        pipeline = Pipeline(ingested, "", os.path.join(data, "two_tower"))
        train = read_dataset(ingested.artifact("ingest", "train_events").path)
        evaluation = read_dataset(ingested.artifact("ingest", "eval_events").path)
        config = RetrievalConfig(epochs=2, early_stopping_patience=0)
        log(f"scaling {size}: {len(train) + len(evaluation)} events")
        _, metrics = pipeline.train(pipeline.prepare(train, evaluation), config, "scaling")
        rows.append(
            {
                "size": size,
                "events": len(train) + len(evaluation),
                "train_positives": metrics["train_positives"],
                "train_seconds_2_epochs": metrics["train_seconds"],
                "examples_per_second": metrics["examples_per_second"],
            }
        )
        log(f"scaling {size}: {rows[-1]}")
    return rows


def markdown(results: dict) -> str:
    lines = []
    for split_name, table in results.items():
        users = next(iter(table.values()))["users"]
        lines += [
            f"### {split_name.replace('_', '-')} temporal split ({users} test users)",
            "",
            "| method | Recall@10 | Recall@50 | Recall@100 | NDCG@10 | chosen on validation |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for method, m in table.items():
            chosen = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in m.get("chosen", {}).items()
            )
            lines.append(
                f"| {method} | {m['recall_at_10']:.4f} | {m['recall_at_50']:.4f} | "
                f"{m['recall_at_100']:.4f} | {m['ndcg_at_10']:.4f} | {chosen} |"
            )
        lines += ["", "| two-tower minus | per user, mean | 95% interval |", "|---|---:|---|"]
        for name, (difference, half_width) in table["two-tower"]["differences"].items():
            metric, peer = name.split(" minus ")
            label = {"recall_at_50": "Recall@50", "ndcg_at_10": "NDCG@10"}[metric]
            lines.append(
                f"| {peer}, {label} | {difference:+.4f} | "
                f"{difference - half_width:+.4f} to {difference + half_width:+.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", default=DEFAULT_ML_100K, help="the ml-100k directory")
    parser.add_argument(
        "--parts", nargs="+", default=["quality", "scaling"], choices=["quality", "scaling"]
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["100k", "1M", "5M"],
        choices=sorted(SIZES),
        help="synthetic sizes for the training time",
    )
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    print(machine())
    results = {}
    with tempfile.TemporaryDirectory() as root:
        if "quality" in args.parts:
            if not os.path.isfile(os.path.join(args.src, "u.data")):
                print(f"MovieLens 100K not found at {args.src}; pass --src", file=sys.stderr)
                return 2
            results["quality"] = quality(args.src, root)
            print(markdown(results["quality"]))
        if "scaling" in args.parts:
            results["scaling"] = scaling(args.sizes, root)
            print("| synthetic events | training positives | 2 epochs (s) | examples/s |")
            print("|---:|---:|---:|---:|")
            for row in results["scaling"]:
                print(
                    f"| {row['events']:,} | {row['train_positives']:,} | "
                    f"{row['train_seconds_2_epochs']:.1f} | {row['examples_per_second']:,.0f} |"
                )
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
