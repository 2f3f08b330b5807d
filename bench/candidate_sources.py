"""The pipeline's candidates against popularity on a real log, with paired intervals:
MovieLens 100K as a new user would run it (``recsys import`` then ``recsys run`` with
the defaults: the last 53 of 215 days are the eval split, the global temporal split
closest to a production log, where 2 in 3 eval users have no training click).

    .venv/bin/python bench/candidate_sources.py [--src ../shared/data/ml-100k]

Then evaluate's own retrieval measurement on that run's artifacts, kept per user:
the merged candidates (the two-tower's, co-engagement's and popularity's, fused as
the funnel fuses them), the two-tower alone and popularity, over all eval users and
over the cold ones (no training click), with the mean per-user difference and its
95% interval; then the run's own table of pages per variant (docs/benchmarks.md,
"Candidate sources").
"""

import argparse
import glob
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.common import DEFAULT_ML_100K, log, machine  # noqa: E402
from recsys.components.evaluate.data import EvalData, TrainingClicks  # noqa: E402
from recsys.components.evaluate.retrieval import RetrievalTask, evaluate_retrieval  # noqa: E402
from recsys.core.contracts import EVENT_TS, ITEM_ID, USER_ID  # noqa: E402
from recsys.core.features import load_registry  # noqa: E402
from recsys.serving import Context, Funnel  # noqa: E402

METRICS = ("recall_at_50", "ndcg_at_10")
SLICES = {"all": "all eval users", "new_users": "cold eval users (no training click)"}


def paired(a: np.ndarray, b: np.ndarray) -> str:
    """Mean per-user a - b with its 95% normal-approximation half-width."""
    difference = a - b
    margin = 1.96 * difference.std(ddof=1) / np.sqrt(len(difference))
    return f"{difference.mean():+.4f} ± {margin:.4f}"


def run_pipeline(src: str, work: str) -> str:
    """``recsys import`` and ``recsys run`` with their defaults; the run's pipeline root."""
    recsys = os.path.join(os.path.dirname(sys.executable), "recsys")
    data = os.path.join(work, "movielens")
    for argv in (
        ["import", "--preset", "movielens-100k", "--src", src, "--out", data],
        ["run", "--data", data, "--workdir", os.path.join(work, "run")],
    ):
        log(" ".join(["recsys", *argv]))
        subprocess.run([recsys, *argv], check=True, stdout=subprocess.DEVNULL)
    return glob.glob(os.path.join(work, "run", "pipeline_root", "recsys-pipeline-*"))[0]


def measure(root: str, schema_dir: str):
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
        artifact("train-retrieval/candidate_sources"),
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
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.workdir or temporary
        root = run_pipeline(args.src, work)
        result = measure(root, os.path.join(work, "movielens", "schemas"))
        print(markdown(result))
        print("\nThe run's pages (evaluate's report):\n")
        print(pages_table(root))
        print("\n" + heaviest_users_page(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
