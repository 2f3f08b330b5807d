"""Ranking quality: this ranker (``train_ranking``) against LightGBM, in one run, on
the same examples, features and time split.

    .venv/bin/python bench/ranking_quality.py                        # both datasets, ~15 min
    .venv/bin/python bench/ranking_quality.py --datasets movielens

Protocol (results in docs/benchmarks.md):
- Data: MovieLens 100K (``recsys import-movielens``; impressions are ratings,
  clicked = rating >= 4, no watch time) and the synthetic generator (with watch time).
- Split by time, as the pipeline does: eval = the last ``eval_days``; for tuning,
  validation = the last ``eval_days`` of the training window. Examples are the
  pipeline's point-in-time join output for each split.
- Same features: the ranker gets the transformed features (tensorflow-transform);
  LightGBM gets the same raw columns, ids and categories as LightGBM categoricals,
  and the one user x item feature both can use, whether the item is in the user's
  history (for LightGBM computed in pandas; the ranker's comes from the transform
  graph). The ranker also learns the history-to-item embedding affinity, which has
  no tabular counterpart.
- Tuning on validation by log loss: LightGBM over learning rate x leaves with early
  stopping on rounds; the ranker over learning rate with the epoch count picked
  per epoch. Then both are refit on the whole training window with the chosen
  settings and scored once on eval: AUC, log loss, normalized entropy,
  calibration ratio (mean predicted / observed), ECE (10 equal-count bins).
- A third row, the ranker trained on 25% of the non-clicks with the calibration
  correction, shows what negative downsampling costs and that the correction
  keeps the probabilities calibrated.
"""

import argparse
import itertools
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import lightgbm as lgb  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

import recsys  # noqa: E402,F401  (prepares the process for TensorFlow)
from bench.common import DEFAULT_ML_100K, ingest, log, machine, prepare_split  # noqa: E402
from recsys.app.movielens import import_movielens  # noqa: E402
from recsys.components.evaluate.metrics import (  # noqa: E402
    calibration,
    expected_calibration_error,
    log_loss,
    normalized_entropy,
    roc_auc,
)
from recsys.components.evaluate.models import call_in_batches, serving_fn  # noqa: E402
from recsys.components.train_ranking import train_ranking  # noqa: E402
from recsys.components.train_ranking.config import RankingConfig  # noqa: E402
from recsys.core import modeling  # noqa: E402
from recsys.core.contracts import CLICK_PROBABILITY, CLICKED, RANKER  # noqa: E402
from recsys.core.derived import DAY  # noqa: E402
from recsys.core.features import load_registry  # noqa: E402
from recsys.core.tables import read_dataset  # noqa: E402

# The ranker's features, for LightGBM: categories as categories, lists left out (the
# history enters as the cross feature history_has_item, computed below).
RANKER_FEATURES = load_registry().select(tower=RANKER)
CATEGORICAL = [f.name for f in RANKER_FEATURES if f.transform == "vocabulary"]
NUMERIC = [f.name for f in RANKER_FEATURES if f.name not in CATEGORICAL and not f.is_list]
LIGHTGBM_GRID = {"learning_rate": [0.03, 0.1], "num_leaves": [31, 127]}
LIGHTGBM_MAX_ROUNDS = 3000
RANKER_TRAINING = dict(epochs=8, batch_size=1024)
RANKER_GRID = {"learning_rate": [0.001, 0.003], "id_dropout": [0.1, 0.3]}
DOWNSAMPLED_RATE = 0.25
DATASETS = {
    # name: (lookback_days, eval_days)
    "movielens": (215, 28),
    "synthetic": (21, 3),
}


def lightgbm_frame(examples: pd.DataFrame) -> pd.DataFrame:
    frame = examples[NUMERIC].astype(float)
    for name in CATEGORICAL:
        frame[name] = examples[name].astype(str)
    # The transform graph's history_has_item, in pandas.
    exploded = examples[["item_id", "user_history_items"]].explode("user_history_items")
    frame["history_has_item"] = (
        (exploded["user_history_items"] == exploded["item_id"]).groupby(level=0).any().astype(float)
    )
    return frame


def categorize(frames: list[pd.DataFrame]) -> None:
    """One category set per column over all frames, so codes agree between them."""
    for name in CATEGORICAL:
        categories = pd.Index(sorted(set().union(*(set(f[name]) for f in frames))))
        for frame in frames:
            frame[name] = pd.Categorical(frame[name], categories=categories)


def scores(labels: np.ndarray, probabilities: np.ndarray, prior: float) -> dict:
    curve = calibration(labels, probabilities)
    return {
        "auc": roc_auc(labels, probabilities),
        "logloss": log_loss(labels, probabilities),
        "normalized_entropy": normalized_entropy(labels, probabilities, prior),
        "calibration_ratio": float(probabilities.mean() / labels.mean()),
        "ece": expected_calibration_error(curve),
    }


def fit_lightgbm(
    train: pd.DataFrame, validation: pd.DataFrame | None, params: dict, rounds: int
) -> lgb.Booster:
    frames = [lightgbm_frame(train)] + (
        [lightgbm_frame(validation)] if validation is not None else []
    )
    categorize(frames)
    data = lgb.Dataset(frames[0], train[CLICKED].to_numpy(), categorical_feature=CATEGORICAL)
    valid = (
        [lgb.Dataset(frames[1], validation[CLICKED].to_numpy(), reference=data)]
        if validation is not None
        else []
    )
    callbacks = [lgb.early_stopping(50, verbose=False)] if valid else []
    return lgb.train(
        {
            "objective": "binary",
            "metric": "binary_logloss",
            "verbosity": -1,
            "seed": 42,
            "num_threads": os.cpu_count(),
            **params,
        },
        data,
        num_boost_round=rounds,
        valid_sets=valid,
        callbacks=callbacks,
    )


def predict_lightgbm(model: lgb.Booster, train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    frames = [lightgbm_frame(train), lightgbm_frame(test)]
    categorize(frames)
    return model.predict(frames[1])


def tune_lightgbm(paths: dict) -> tuple[dict, float]:
    fit, validation = (read_dataset(paths[n]) for n in ("train_examples", "eval_examples"))
    labels = validation[CLICKED].to_numpy()
    best, best_loss = None, np.inf
    for values in itertools.product(*LIGHTGBM_GRID.values()):
        params = dict(zip(LIGHTGBM_GRID, values, strict=True))
        model = fit_lightgbm(fit, validation, params, LIGHTGBM_MAX_ROUNDS)
        loss = log_loss(labels, predict_lightgbm(model, fit, validation))
        log(f"lightgbm {params}: {model.best_iteration} rounds, validation log loss {loss:.4f}")
        if loss < best_loss:
            best, best_loss = {**params, "rounds": model.best_iteration}, loss
    return best, best_loss


class ValidationLogLoss(tf.keras.callbacks.Callback):
    """Log loss of the calibrated click probability on the validation data after
    each epoch (Keras's val_loss adds the watch-time head's loss)."""

    def __init__(self, transformed_validation: str):
        super().__init__()
        registry = load_registry()
        columns = [f.transformed_name for f in registry.select(tower=RANKER)]
        crosses = [cross.transformed_name for cross in registry.tower_crosses(RANKER)]
        self.data = modeling.load_transformed(transformed_validation, columns + crosses + [CLICKED])
        self.labels = self.data.pop(CLICKED)
        self.losses = []

    def on_epoch_end(self, epoch, logs=None):
        logits = np.concatenate(
            [
                self.model(batch, training=False)["click_logit"].numpy().ravel()
                for batch in modeling.batched(self.data, 8192)
            ]
        )
        self.losses.append(log_loss(self.labels, 1 / (1 + np.exp(-logits))))


def tune_ranker(paths: dict, rate: float) -> tuple[dict, float]:
    best, best_loss = None, np.inf
    for values in itertools.product(*RANKER_GRID.values()):
        params = dict(zip(RANKER_GRID, values, strict=True))
        validation = ValidationLogLoss(paths["transformed_eval"])
        train_ranking.train(
            paths["transformed_train"],
            paths["transformed_eval"],
            paths["transform_graph"],
            RankingConfig(**{**RANKER_TRAINING, **params, "negative_sampling_rate": rate}),
            callbacks=[validation],
        )
        epoch = int(np.argmin(validation.losses))
        log(
            f"ranker {params} rate {rate}: validation log loss by epoch "
            f"{[round(v, 4) for v in validation.losses]}"
        )
        if validation.losses[epoch] < best_loss:
            best, best_loss = {**params, "epochs": epoch + 1}, validation.losses[epoch]
    return best, best_loss


def ranker_probabilities(
    paths: dict, params: dict, rate: float, work: str
) -> tuple[np.ndarray, dict]:
    config = RankingConfig(**{**RANKER_TRAINING, **params, "negative_sampling_rate": rate})
    model, metrics = train_ranking.train(
        paths["transformed_train"], paths["transformed_eval"], paths["transform_graph"], config
    )
    exported = os.path.join(work, f"ranker_{rate}")
    train_ranking.export(model, paths["transform_graph"], exported)
    examples = read_dataset(paths["eval_examples"])
    return call_in_batches(serving_fn(exported), examples, CLICK_PROBABILITY), metrics


def load(dataset: str, root: str, src: str):
    """(the ingest run, the schema directory) of ``dataset``."""
    raw = os.path.join(root, "raw")
    if dataset == "movielens":
        import_movielens(src, raw)
        schema_dir = os.path.join(raw, "schemas")
    else:
        from recsys.app.generate import generate

        generate(raw, users=3000, items=600, days=DATASETS[dataset][0] + 1)
        schema_dir = ""
    lookback, eval_days = DATASETS[dataset]
    return ingest(
        raw,
        os.path.join(root, "ingested"),
        lookback_days=lookback,
        eval_days=eval_days,
        schema_dir=schema_dir,
    ), schema_dir


def compare(dataset: str, root: str, src: str) -> dict:
    ingested, schema_dir = load(dataset, root, src)
    as_of = int(ingested.artifact("ingest", "ingest_metrics").metadata["as_of"])
    eval_days = DATASETS[dataset][1]
    train = read_dataset(ingested.artifact("ingest", "train_events").path)
    evaluation = read_dataset(ingested.artifact("ingest", "eval_events").path)
    cut = as_of - 2 * eval_days * DAY
    fit, validation = train[train["event_ts"] < cut], train[train["event_ts"] >= cut]
    log(f"{dataset}: {len(fit)} fit / {len(validation)} validation / {len(evaluation)} eval events")
    tuning = prepare_split(
        ingested, os.path.join(root, "tuning"), fit, validation, cut, schema_dir=schema_dir
    )
    final = prepare_split(
        ingested,
        os.path.join(root, "final"),
        train,
        evaluation,
        as_of - eval_days * DAY,
        schema_dir=schema_dir,
    )
    train_examples, eval_examples = (
        read_dataset(final[n]) for n in ("train_examples", "eval_examples")
    )
    labels = eval_examples[CLICKED].to_numpy()
    prior = float(train_examples[CLICKED].mean())
    result = {
        "train_examples": len(train_examples),
        "eval_examples": len(eval_examples),
        "train_ctr": prior,
        "eval_ctr": float(labels.mean()),
        "rows": {},
    }

    params, loss = tune_lightgbm(tuning)
    rounds = params.pop("rounds")
    model = fit_lightgbm(train_examples, None, params, rounds)
    result["rows"]["LightGBM"] = {
        **scores(labels, predict_lightgbm(model, train_examples, eval_examples), prior),
        "chosen": {**params, "rounds": rounds, "validation_logloss": loss},
    }
    for name, rate in (
        ("this ranker", 1.0),
        (f"this ranker, {DOWNSAMPLED_RATE:.0%} of non-clicks", DOWNSAMPLED_RATE),
    ):
        params, loss = tune_ranker(tuning, rate)
        probabilities, metrics = ranker_probabilities(final, params, rate, root)
        result["rows"][name] = {
            **scores(labels, probabilities, prior),
            "chosen": {**params, "validation_logloss": loss},
            "train_seconds": metrics["train_seconds"],
        }
        log(f"{dataset}: {name}: {result['rows'][name]}")
    return result


def markdown(dataset: str, result: dict) -> str:
    lines = [
        f"{dataset}: {result['train_examples']:,} train / {result['eval_examples']:,} eval "
        f"examples, click rate {result['train_ctr']:.3f} train / {result['eval_ctr']:.3f} "
        "eval",
        "",
        "| model | AUC | log loss | normalized entropy | calibration ratio | ECE | chosen |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in result["rows"].items():
        chosen = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row["chosen"].items()
        )
        lines.append(
            f"| {name} | {row['auc']:.4f} | {row['logloss']:.4f} | "
            f"{row['normalized_entropy']:.4f} | {row['calibration_ratio']:.3f} | "
            f"{row['ece']:.4f} | {chosen} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--src", default=DEFAULT_ML_100K, help="the ml-100k directory")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--out", default="", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if "movielens" in args.datasets and not os.path.isfile(os.path.join(args.src, "u.data")):
        print(f"MovieLens 100K not found at {args.src}; pass --src", file=sys.stderr)
        return 2
    print(machine())
    results = {}
    for dataset in args.datasets:
        with tempfile.TemporaryDirectory() as root:
            results[dataset] = compare(dataset, root, args.src)
        print(markdown(dataset, results[dataset]) + "\n", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
