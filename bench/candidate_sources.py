"""The pipeline's candidates against popularity on a real log, with paired intervals:
MovieLens 100K as a new user would run it (``recsys import`` then ``recsys run`` with
the defaults: the last 53 of 215 days are the eval split, the global temporal split
closest to a production log, where 2 in 3 eval users have no training click).

    .venv/bin/python bench/candidate_sources.py [--src ../shared/data/ml-100k]

First the fusion weight (``retrieval_sources_weight``: the other sources' ranks
against the two-tower's) is chosen on validation splits, never on the eval split
reported: the same log with its window ending where the eval split starts (so the
run's own eval split is the last ``eval_days`` before it), and a synthetic world
of another seed than the sample's. Each weight of FUSION_WEIGHTS is applied to
the validation run's own candidate sources (the weight is read at fusion time,
from sources.json) and the merged candidates' Recall@50 measured, as the release
gate measures it; the weight with the best mean Recall@50 relative to the
default's wins.

Then, on the same MovieLens validation window, the ranker's consumption head
(``ranking_consumption_negatives``; 0 = off, the click head alone): a ``recsys run``
per value, and the NDCG@10 of the pages the ranker orders, from the run's own
report; the best is chosen (``--parts consumption`` runs this part alone).

Then evaluate's own retrieval measurement on that run's artifacts, kept per user:
the merged candidates (the two-tower's, co-engagement's and popularity's, fused as
the funnel fuses them), the two-tower alone and popularity, over all eval users and
over the cold ones (no training click), with the mean per-user difference and its
95% interval; then the run's own table of pages per variant (docs/benchmarks.md,
"Candidate sources").
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.common import DEFAULT_ML_100K, log, machine  # noqa: E402
from recsys.app.local_run import OUTPUTS_FILE  # noqa: E402
from recsys.components.evaluate.data import EvalData, TrainingClicks  # noqa: E402
from recsys.components.evaluate.retrieval import RetrievalTask, evaluate_retrieval  # noqa: E402
from recsys.components.train_ranking.config import RankingConfig  # noqa: E402
from recsys.components.train_retrieval.config import RetrievalConfig  # noqa: E402
from recsys.core.contracts import EVENT_TS, ITEM_ID, SOURCES_FILE, USER_ID  # noqa: E402
from recsys.core.features import load_registry  # noqa: E402
from recsys.serving import Context, Funnel  # noqa: E402

METRICS = ("recall_at_50", "ndcg_at_10")
SLICES = {"all": "all eval users", "new_users": "cold eval users (no training click)"}
FUSION_WEIGHTS = [0.25, 0.5, 1.0, 2.0]
DEFAULT_WEIGHT = RetrievalConfig().sources_weight
CONSUMPTION_NEGATIVES = [0, 1, 3, 8]
DEFAULT_NEGATIVES = RankingConfig().consumption_negatives
PARTS = ("fusion", "consumption", "eval")
DAY_SECONDS = 86_400


def paired(a: np.ndarray, b: np.ndarray) -> str:
    """Mean per-user a - b with its 95% normal-approximation half-width."""
    difference = a - b
    margin = 1.96 * difference.std(ddof=1) / np.sqrt(len(difference))
    return f"{difference.mean():+.4f} ± {margin:.4f}"


RECSYS = os.path.join(os.path.dirname(sys.executable), "recsys")


def recsys(*argv: str) -> None:
    log(" ".join(["recsys", *argv]))
    subprocess.run([RECSYS, *argv], check=True, stdout=subprocess.DEVNULL)


def run_pipeline(data: str, workdir: str, config: str = "") -> str:
    """``recsys run`` on ``data`` (its recsys.yaml, and ``config`` over it); the run's
    pipeline root."""
    recsys("run", "--data", data, "--workdir", workdir, *(["--config", config] if config else []))
    return glob.glob(os.path.join(workdir, "pipeline_root", "recsys-pipeline-*"))[0]


def validation_config(data: str, path: str) -> str:
    """Parameters whose window ends where ``data``'s eval split starts, with an eval
    split as long: that split becomes the run's eval split, inside the training data."""
    with open(os.path.join(data, "recsys.yaml")) as handle:
        lines = [line.split(":", 1) for line in handle if ":" in line and line[0] != "#"]
    parameters = {key.strip(): value.strip() for key, value in lines}
    lookback, eval_days = int(parameters["lookback_days"]), int(parameters["eval_days"])
    newest = pd.read_parquet(os.path.join(data, "impressions.parquet"), columns=[EVENT_TS])
    newest = pd.Timestamp(newest[EVENT_TS].max())
    as_of = newest.normalize() + pd.Timedelta(days=1 - eval_days)
    with open(path, "w") as handle:
        handle.write(
            f"as_of: '{as_of.strftime('%Y-%m-%d')}'\nlookback_days: {lookback - eval_days}\n"
        )
    return path


def weighted_sources(root: str, weight: float, directory: str) -> str:
    """A copy of the run's candidate sources with the fusion ``weight``."""
    shutil.copytree(os.path.join(root, "train-retrieval", "candidate_sources"), directory)
    path = os.path.join(directory, SOURCES_FILE)
    with open(path) as handle:
        meta = json.load(handle)
    with open(path, "w") as handle:
        json.dump({**meta, "weight": weight}, handle)
    return directory


def fusion_grid(root: str, schema_dir: str, work: str) -> dict[float, float]:
    """Per fusion weight, the merged candidates' Recall@50 on the run's eval split."""
    recall = {}
    for weight in FUSION_WEIGHTS:
        sources = weighted_sources(root, weight, os.path.join(work, f"sources_{weight}"))
        result = measure(root, schema_dir, sources)
        recall[weight] = float(result.model["all"].per_user["recall_at_50"].mean())
        log(f"fusion weight {weight}: merged Recall@50 {recall[weight]:.4f}")
    return recall


def choose_fusion_weight(grids: dict[str, dict[float, float]]) -> tuple[float, str]:
    """The weight with the best mean Recall@50 relative to the default's, and a table."""
    relative = {
        weight: float(np.mean([grid[weight] / grid[DEFAULT_WEIGHT] for grid in grids.values()]))
        for weight in FUSION_WEIGHTS
    }
    chosen = max(FUSION_WEIGHTS, key=lambda weight: (relative[weight], weight == DEFAULT_WEIGHT))
    lines = [
        "| fusion weight | "
        + " | ".join(f"{name}: Recall@50" for name in grids)
        + " | mean relative to the default |",
        "|---:|" + "---:|" * (len(grids) + 1),
    ]
    for weight in FUSION_WEIGHTS:
        mark = " (chosen)" if weight == chosen else ""
        lines.append(
            f"| {weight}{mark} | "
            + " | ".join(f"{grid[weight]:.4f}" for grid in grids.values())
            + f" | {relative[weight]:.4f} |"
        )
    return chosen, "\n".join(lines)


def measure(root: str, schema_dir: str, candidate_sources: str = ""):
    def artifact(path):
        return os.path.join(root, path)

    registry = load_registry(schema_dir)
    train = TrainingClicks.read(artifact("join-features/train_examples"))
    data = EvalData.read(artifact("join-features/eval_examples"), registry.role("category"))
    return evaluate_retrieval(
        artifact("train-retrieval/query_model"),
        artifact("train-retrieval/item_embeddings"),
        artifact("train-retrieval/retrieval_model"),
        RetrievalTask.of(train, data),
        [10, 50, 100],
        candidate_sources or artifact("train-retrieval/candidate_sources"),
    )


def markdown(result) -> str:
    lines = [
        "| users | n | metric | merged candidates | two-tower alone | popularity "
        "| merged - popularity | merged - two-tower |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, title in SLICES.items():
        merged, alone, popular = (
            lists[name].per_user for lists in (result.model, result.two_tower, result.popularity)
        )
        for metric in METRICS:
            label = metric.replace("recall_at_", "Recall@").replace("ndcg_at_", "NDCG@")
            lines.append(
                f"| {title} | {result.model[name].users} | {label} "
                f"| {merged[metric].mean():.4f} | {alone[metric].mean():.4f} "
                f"| {popular[metric].mean():.4f} | {paired(merged[metric], popular[metric])} "
                f"| {paired(merged[metric], alone[metric])} |"
            )
    shares = ", ".join(f"{source} {share:.0%}" for source, share in result.source_share.items())
    return "\n".join([*lines, "", f"Of the merged top 50: {shares}.", "", machine()])


def pages_table(root: str) -> str:
    """The run's own "What each stage adds" table (pages of each variant, logged clicks)."""
    with open(os.path.join(root, "evaluate", "evaluation_report")) as handle:
        lines = handle.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| variant |"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return "\n".join(lines[start:end])


def funnel_metrics(workdir: str) -> dict:
    """The funnel metrics of the one run under ``workdir`` (its outputs file)."""
    (path,) = glob.glob(os.path.join(workdir, "runs", "*", OUTPUTS_FILE))
    with open(path) as handle:
        return json.load(handle)["funnel_metrics"]["metadata"]


def consumption_grid(data: str, validation: str, work: str) -> tuple[int, str]:
    """Per value of CONSUMPTION_NEGATIVES, a run on the validation window and the
    NDCG@10 of the ranker's pages; the best value and a table."""
    with open(validation) as handle:
        window = handle.read()
    os.makedirs(work, exist_ok=True)
    ndcg = {}
    for negatives in CONSUMPTION_NEGATIVES:
        config = os.path.join(work, f"consumption_{negatives}.yaml")
        with open(config, "w") as handle:
            handle.write(f"{window}ranking_consumption_negatives: {negatives}\n")
        run = os.path.join(work, f"consumption_{negatives}")
        run_pipeline(data, run, config)
        ndcg[negatives] = funnel_metrics(run)
        log(
            f"consumption negatives {negatives}: ranker's pages NDCG@10 "
            f"{ndcg[negatives]['ranker_order_ndcg_at_10']:.4f}"
        )
    chosen = max(CONSUMPTION_NEGATIVES, key=lambda n: ndcg[n]["ranker_order_ndcg_at_10"])
    lines = [
        "| consumption negatives | the ranker's pages: NDCG@10 | popularity's pages |",
        "|---:|---:|---:|",
    ] + [
        f"| {n}{' (chosen)' if n == chosen else ''}{' (off)' if n == 0 else ''} | "
        f"{ndcg[n]['ranker_order_ndcg_at_10']:.4f} | {ndcg[n]['popularity_ndcg_at_10']:.4f} |"
        for n in CONSUMPTION_NEGATIVES
    ]
    return chosen, "\n".join(lines)


def heaviest_users_page(work: str) -> str:
    """The page served to the user with the most ratings, and how many of its items
    that user had rated before (the watched rule: none)."""
    ratings = pd.read_parquet(os.path.join(work, "movielens", "impressions.parquet"))
    user = ratings[USER_ID].value_counts().index[0]
    funnel = Funnel.from_serving_root(os.path.join(work, "run", "serving"))
    newest = pd.Timestamp(ratings[EVENT_TS].max())
    at = (newest if newest.tzinfo else newest.tz_localize("UTC")) + pd.Timedelta(hours=1)
    result = funnel.recommend(str(user), Context(at), k=10)
    rated = set(ratings.loc[ratings[USER_ID] == user, ITEM_ID].astype(str))
    again = len(set(result.items[ITEM_ID]) & rated)
    return (
        f"The heaviest user ({user}, {len(rated)} rated items): a page of "
        f"{len(result.items)} with {again} already rated; the watched rule removed "
        f"{result.removed.get('watched', 0)} of the candidates."
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=DEFAULT_ML_100K, help="the unzipped ml-100k directory")
    parser.add_argument("--workdir", default="", help="default: a temporary directory")
    parser.add_argument(
        "--validation-seed", type=int, default=11, help="the synthetic validation world's seed"
    )
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="default: all of them"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.workdir or temporary
        data = os.path.join(work, "movielens")
        recsys("import", "--preset", "movielens-100k", "--src", args.src, "--out", data)
        schema_dir = os.path.join(data, "schemas")
        validation = validation_config(data, os.path.join(work, "validation.yaml"))
        if "fusion" in args.parts:
            fusion(data, schema_dir, validation, work, args.validation_seed)
        if "consumption" in args.parts:
            chosen, table = consumption_grid(data, validation, os.path.join(work, "consumption"))
            print("The ranker's consumption negatives, chosen on MovieLens's validation window:\n")
            print(table)
            if chosen != DEFAULT_NEGATIVES:
                print(f"\nThe default ({DEFAULT_NEGATIVES}) is not the chosen value ({chosen}).")
        if "eval" in args.parts:
            root = run_pipeline(data, os.path.join(work, "run"))
            result = measure(root, schema_dir)
            print(markdown(result))
            print("\nThe run's pages (evaluate's report):\n")
            print(pages_table(root))
            print("\n" + heaviest_users_page(work))
    return 0


def fusion(data: str, schema_dir: str, validation: str, work: str, seed: int) -> None:
    """Choose the fusion weight on the validation splits and print the table."""
    world = os.path.join(work, f"world{seed}")
    recsys("generate", "--out", world, "--seed", str(seed))
    grids = {
        "MovieLens, the window before the eval split": fusion_grid(
            run_pipeline(data, os.path.join(work, "validation"), validation),
            schema_dir,
            os.path.join(work, "ml_grid"),
        ),
        f"synthetic world {seed}": fusion_grid(
            run_pipeline(world, os.path.join(work, "world_run")),
            "",
            os.path.join(work, "world_grid"),
        ),
    }
    chosen, table = choose_fusion_weight(grids)
    print("Fusion weight, chosen on validation splits:\n")
    print(table)
    if chosen != DEFAULT_WEIGHT:
        print(f"\nThe default ({DEFAULT_WEIGHT}) is not the chosen weight ({chosen}).")


if __name__ == "__main__":
    sys.exit(main())
