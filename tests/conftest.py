"""Shared fixtures: a tiny generated dataset and the whole DAG run on it once.

Expensive fixtures are session-scoped everywhere: pytest-xdist's loadgroup keeps a
group on one worker but may interleave its modules, and a module-scoped fixture is
torn down whenever the worker moves to another module, then built again.

``stages`` runs the pipeline's own wiring in this process (``run_in_process``):
the same stages and arguments as the compiled pipeline, without KFP. The
end-to-end tests in test_e2e.py run the compiled YAML instead.
"""

import json
import os

import pytest

from recsys.app.generate import generate
from recsys.core.contracts import RANKING, RETRIEVAL

TINY = dict(users=300, items=120, days=10, seed=3)
LOOKBACK_DAYS, EVAL_DAYS = 10, 3
# Small models for small data: the pipeline parameters the shared run uses.
TEST_PARAMETERS = dict(
    lookback_days=LOOKBACK_DAYS,
    eval_days=EVAL_DAYS,
    retrieval_epochs=3,
    retrieval_batch_size=256,
    retrieval_top_k=50,
    ranking_epochs=2,
    ranking_batch_size=512,
    recall_k=20,
)
ML_100K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ml-100k")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny_data"))
    generate(out, **TINY)
    return out


@pytest.fixture(scope="session")
def stages(tiny_data, tmp_path_factory):
    """The whole DAG run once on the tiny data (nothing serving before it, so push
    pushes version 1 into its own serving root); every output's path, and what the
    stages reported."""
    from recsys.components.validate.validate import SUMMARY_FILE
    from recsys.pipelines.in_process import run_in_process

    root = tmp_path_factory.mktemp("stages")
    run = run_in_process(
        str(root / "pipeline_root"),
        {"data_root": tiny_data, "serving_root": str(root / "serving"), **TEST_PARAMETERS},
    )
    paths = run.paths()
    paths["statistics_root"] = str(root / "pipeline_root" / "statistics")
    with open(paths["infra_validation"]) as handle:
        infra = json.load(handle)
    with open(os.path.join(paths["anomalies"], SUMMARY_FILE)) as handle:
        validation = json.load(handle)
    return {
        "paths": paths,
        "run": run,
        "root": root,
        "serving_root": str(root / "serving"),
        "counts": dict(run.artifact("ingest", "ingest_metrics").metadata),
        "join_counts": dict(run.artifact("join_features", "join_metrics").metadata),
        "validation": validation,
        "infra": infra,
        "evaluation": evaluation_of(run),
    }


def evaluation_of(run) -> dict:
    """What evaluate reported: its metrics, the blessing and the reports, as written."""

    def read(output, mode="r"):
        with open(run.artifact("evaluate", output).path, mode) as handle:
            return handle.read()

    return {
        "retrieval": dict(run.artifact("evaluate", "retrieval_metrics").metadata),
        "ranking": dict(run.artifact("evaluate", "ranking_metrics").metadata),
        "funnel": dict(run.artifact("evaluate", "funnel_metrics").metadata),
        "blessing": json.loads(read("blessing")),
        "markdown": read("evaluation_report"),
        "html": read("evaluation_html"),
        "reliability_png": read("reliability_png", "rb"),
    }


def push_stages(
    stages,
    serving_root: str,
    blessing: str = "",
    models: dict | None = None,
    keep_versions: int = 5,
    **options,
) -> dict:
    """Push the stages' models (or ``models``) with their warmup requests and snapshots;
    ``options`` are push's (rerank, provenance, ...)."""
    from recsys.components.push.config import PushConfig
    from recsys.components.push.push import push
    from recsys.core.contracts import SNAPSHOT_EMBEDDINGS, SNAPSHOT_ITEMS, SNAPSHOT_USERS

    paths = stages["paths"]
    return push(
        blessing or paths["blessing"],
        models or {RETRIEVAL: paths["retrieval_model"], RANKING: paths["ranking_model"]},
        paths["warmup_requests"],
        {
            SNAPSHOT_USERS: paths["user_snapshot"],
            SNAPSHOT_ITEMS: paths["item_snapshot"],
            SNAPSHOT_EMBEDDINGS: paths["item_embeddings"],
        },
        serving_root,
        config=PushConfig(keep_versions=keep_versions),
        **options,
    )
