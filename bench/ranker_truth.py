"""The ranker against the oracle's order, chosen on held-out worlds, reported on the
sample: how much of what its candidates allow the funnel earns, in truth.

    .venv/bin/python bench/ranker_truth.py                    # ~30 min
    .venv/bin/python bench/ranker_truth.py --parts extras     # the defaults only, ~10 min

Protocol (docs/benchmarks.md, "The ranker against the oracle"):
- Worlds: ``recsys generate`` with the sample's size and a seed. The choice is
  made on the validation seeds' worlds (other users, items and tastes) and then
  reported on the report seed's world (7: the sample ``recsys run`` generates),
  so the reported world decides nothing.
- Per world and history length (the join's ``history_length``), ``recsys run``
  with that one parameter changed; then each ranker variant of RANKER_GRID is
  retrained on the run's own transformed data (``train_ranking.train``, the
  run's other settings) and the run's funnel is evaluated with it
  (``evaluate_funnel``: the same candidates, re-ranking rules and pages as the
  pipeline's evaluate), valued in the world's truth.
- The measure: ``funnel_true_value_share_of_oracle``, the funnel's true value per
  eval request over the oracle's best order of the same candidates; beside it
  the click order's true clicks against the retrieval order's (issue 29, point 3).
- The chosen point: the best mean share over the validation worlds.

Then, with the pipeline's defaults (``--parts extras``), where the rest of the
oracle's value goes on the report world: the candidates ordered by the ranker's
score, by the truth's click probability times the ranker's watch time, and by the
ranker's click probability times the truth's watch time (which head loses what);
and the same world's users and items with VOLUME_FACTOR times the impressions per
user and day, to show what more data buys the same model.
"""

import argparse
import glob
import itertools
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from bench.common import log, machine  # noqa: E402
from recsys.components.evaluate import offpolicy  # noqa: E402
from recsys.components.evaluate.data import EvalData, TrainingClicks  # noqa: E402
from recsys.components.evaluate.funnel import (  # noqa: E402
    LOGGED_COLUMNS,
    evaluate_funnel,
    ordered_pages,
    watched_in_training,
)
from recsys.components.evaluate.models import serving_fn  # noqa: E402
from recsys.components.evaluate.retrieval import RetrievalTask  # noqa: E402
from recsys.components.features.config import JoinConfig  # noqa: E402
from recsys.components.train_ranking import train_ranking  # noqa: E402
from recsys.components.train_ranking.config import RankingConfig  # noqa: E402
from recsys.core.contracts import (  # noqa: E402
    CLICK_PROBABILITY,
    EVENT_TS,
    EXPECTED_WATCH_SECONDS,
    PROPENSITY,
    RANKING,
    RETRIEVAL,
    SCORE,
    WATCHED_ITEMS,
)
from recsys.core.features import load_registry  # noqa: E402
from recsys.core.ground_truth import Oracle  # noqa: E402
from recsys.core.tables import read_dataset  # noqa: E402
from recsys.serving.backends import InProcessBackend  # noqa: E402
from recsys.serving.funnel import Funnel  # noqa: E402
from recsys.serving.rerank import RerankConfig  # noqa: E402
from recsys.serving.snapshot import FeatureSnapshot  # noqa: E402

HISTORY_LENGTHS = [10, 50]
# The sample's impressions per user and day (recsys generate's default) times this.
VOLUME_FACTOR = 10
RANKER_GRID = {"dot_interactions": [False, True], "learning_rate": [0.002, 0.01, 0.03]}
MEASURES = {
    "share": "funnel_true_value_share_of_oracle",
    "funnel value": "funnel_true_value",
    "click order clicks": "click_order_true_clicks",
    "retrieval order clicks": "retrieval_order_true_clicks",
}


def run_pipeline(seed: int, history_length: int, work: str, volume: int = 1) -> tuple[str, str]:
    """A generated world (``volume`` times the sample's impressions per user and day)
    and a pipeline run on it; (data root, pipeline root)."""
    recsys = os.path.join(os.path.dirname(sys.executable), "recsys")
    data = os.path.join(work, f"world{seed}_x{volume}")
    if not os.path.isdir(data):
        log(f"recsys generate --seed {seed} (x{volume})")
        rate = ["--impressions-per-user-day", str(4.0 * volume)] if volume > 1 else []
        subprocess.run(
            [recsys, "generate", "--out", data, "--seed", str(seed), *rate],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    run = os.path.join(work, f"run{seed}_x{volume}_h{history_length}")
    config = os.path.join(work, f"h{history_length}.yaml")
    with open(config, "w") as file:
        file.write(f"history_length: {history_length}\n")
    log(f"recsys run (world {seed}, history_length {history_length})")
    subprocess.run(
        [recsys, "run", "--data", data, "--workdir", run, "--config", config],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return data, glob.glob(os.path.join(run, "pipeline_root", "recsys-pipeline-*"))[0]


def grid_points() -> list[dict]:
    return [
        dict(zip(RANKER_GRID, values, strict=True))
        for values in itertools.product(*RANKER_GRID.values())
    ]


def run_inputs(root: str):
    """What evaluate reads of a run (pipeline root ``root``): a path maker for its
    artifacts, the registry, the eval data, the retrieval task and the eval
    impressions."""

    def artifact(path):
        return os.path.join(root, path)

    registry = load_registry(artifact("validate/schema"))
    train = TrainingClicks.read(artifact("join-features/train_examples"))
    data = EvalData.read(artifact("join-features/eval_examples"), registry.role("category"))
    eval_events = read_dataset(
        artifact("ingest/eval_events"), columns=[*LOGGED_COLUMNS, PROPENSITY]
    )
    return artifact, registry, data, RetrievalTask.of(train, data), eval_events


def measure_variants(data_root: str, root: str, work: str, points: list[dict]) -> dict[str, dict]:
    """Per point (RankingConfig fields): the funnel's metrics with a ranker retrained so."""
    artifact, registry, data, task, eval_events = run_inputs(root)
    eval_items = read_dataset(artifact("join-features/eval_item_snapshot"))
    oracle = Oracle.load(data_root)
    transformed = artifact("transform-features")
    results = {}
    for point in points:
        config = RankingConfig(**point)
        model, _ = train_ranking.train(
            f"{transformed}/transformed_train",
            f"{transformed}/transformed_eval",
            f"{transformed}/transform_graph",
            config,
            registry,
        )
        ranker = tempfile.mkdtemp(dir=work)
        train_ranking.export(model, f"{transformed}/transform_graph", ranker, registry)
        funnel = evaluate_funnel(
            artifact("train-retrieval/retrieval_model"),
            ranker,
            artifact("train-retrieval/item_embeddings"),
            artifact("train-retrieval/candidate_sources"),
            eval_items,
            data,
            task,
            RerankConfig(),
            registry,
            float("nan"),
            eval_events,
            oracle,
            config.score_watch_weight,
        ).metrics()
        results[json.dumps(point)] = {name: funnel[key] for name, key in MEASURES.items()}
        log(f"{point}: share of oracle {funnel['funnel_true_value_share_of_oracle']:.3f}")
    return results


def decomposition(data_root: str, root: str) -> dict[str, float]:
    """The run's own models: the true value per eval request of pages ordered by the
    oracle, the ranker's score and the two mixes of the ranker's heads with the truth,
    each over the oracle's."""
    artifact, registry, data, task, eval_events = run_inputs(root)
    features = FeatureSnapshot(
        None,
        read_dataset(artifact("join-features/eval_item_snapshot")),
        read_dataset(artifact("train-retrieval/item_embeddings")),
        registry,
        artifact("train-retrieval/candidate_sources"),
    )
    backend = InProcessBackend.of_signatures(
        {
            RETRIEVAL: serving_fn(artifact("train-retrieval/retrieval_model")),
            RANKING: serving_fn(artifact("train-ranking/ranking_model")),
        }
    )
    config = RerankConfig()
    users = data.users
    queries = data.first_of(users)
    queries[WATCHED_ITEMS] = watched_in_training(task.train_clicks, users)
    scored = Funnel(backend, features, config).candidates(queries)
    oracle = Oracle.load(data_root)
    truth = oracle.engagement(
        users[scored.query_of], scored.item_ids, queries[EVENT_TS].to_numpy()[scored.query_of]
    )
    # Per candidate: a click's watch minutes, as the ranker and the truth expect them.
    watch_weight = RankingConfig().score_watch_weight
    predicted_minutes = scored.ranked[EXPECTED_WATCH_SECONDS] / 60.0
    true_minutes = truth.expected_watch_seconds / np.maximum(truth.click_probability, 1e-12) / 60
    orders = {
        "oracle": truth.click_probability * (1 + watch_weight * true_minutes),
        "ranker score": scored.ranked[SCORE],
        "true click probability x ranker's watch time": truth.click_probability
        * (1 + watch_weight * predicted_minutes),
        "ranker's click probability x true watch time": scored.ranked[CLICK_PROBABILITY]
        * (1 + watch_weight * true_minutes),
    }
    value = [r for r in offpolicy.rewards(watch_weight) if r.name == "value"]
    values = {
        name: offpolicy.true_value(
            ordered_pages(scored, users, key, config.k), eval_events, oracle, value
        )["value"]
        for name, key in orders.items()
    }
    return {name: values[name] / values["oracle"] for name in orders}


def extras(seed: int, work: str) -> None:
    """With the pipeline's defaults: the decomposition on world ``seed``, and the
    share of the oracle at VOLUME_FACTOR times the impressions."""
    history_length = JoinConfig().history_length
    print(f"\nWith the defaults on world {seed} (shares of the oracle's order):\n")
    print("| pages ordered by | share of the oracle's true value |")
    print("|---|---:|")
    for name, share in decomposition(*run_pipeline(seed, history_length, work)).items():
        print(f"| {name} | {share:.3f} |")
    print(f"\nThe same world with {VOLUME_FACTOR}x the impressions per user and day:\n")
    print("| ranker | share of oracle |")
    print("|---|---:|")
    data_root, root = run_pipeline(seed, history_length, work, VOLUME_FACTOR)
    before = {"dot_interactions": False, "learning_rate": 0.002}  # the defaults before
    points = [before, {name: getattr(RankingConfig(), name) for name in before}]
    for point, measures in measure_variants(data_root, root, work, points).items():
        print(f"| {point} | {measures['share']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--validation-seeds", type=int, nargs="+", default=[11, 12])
    parser.add_argument("--report-seed", type=int, default=7)
    parser.add_argument(
        "--parts", nargs="+", default=["grid", "extras"], choices=["grid", "extras"]
    )
    parser.add_argument("--out", help="write the grid's results as JSON here")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as work:
        if "grid" in args.parts:
            grid(args, work)
        if "extras" in args.parts:
            extras(args.report_seed, work)


def grid(args, work: str) -> None:
    """RANKER_GRID x HISTORY_LENGTHS on every world; the choice on the validation ones."""
    results = {}
    for seed in [*args.validation_seeds, args.report_seed]:
        for history_length in HISTORY_LENGTHS:
            data_root, root = run_pipeline(seed, history_length, work)
            for point, measures in measure_variants(data_root, root, work, grid_points()).items():
                key = json.dumps({"history_length": history_length, **json.loads(point)})
                results.setdefault(key, {})[seed] = measures
    validation = {
        key: float(np.mean([by_seed[s]["share"] for s in args.validation_seeds]))
        for key, by_seed in results.items()
    }
    chosen = max(validation, key=validation.get)
    print(
        "\n| history_length, ranker | share of oracle, validation worlds "
        f"{args.validation_seeds} (mean) | report world {args.report_seed}: share "
        "| funnel true value | click order true clicks | retrieval order true clicks |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for key, by_seed in results.items():
        report = by_seed[args.report_seed]
        mark = " (chosen)" if key == chosen else ""
        print(
            f"| {key}{mark} | {validation[key]:.3f} | {report['share']:.3f} | "
            f"{report['funnel value']:.3f} | {report['click order clicks']:.3f} | "
            f"{report['retrieval order clicks']:.3f} |"
        )
    if args.out:
        with open(args.out, "w") as file:
            json.dump({"chosen": chosen, "results": results}, file, indent=2)


if __name__ == "__main__":
    main()
