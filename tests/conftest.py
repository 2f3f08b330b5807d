"""Shared fixtures: a tiny generated dataset and the whole DAG run on it once.

Expensive fixtures are session-scoped everywhere: pytest-xdist's loadgroup keeps a
group on one worker but may interleave its modules, and a module-scoped fixture is
torn down whenever the worker moves to another module, then built again.

``stages`` runs the pipeline's own wiring in this process (``run_in_process``):
the same stages and arguments as the compiled pipeline, without KFP. The
end-to-end tests in test_e2e.py run the compiled YAML instead.
"""

import contextlib
import fcntl
import json
import os
import shutil
import sys
import uuid

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
    # The ranker needs enough steps on 8,000 rows to beat the retrieval order in truth
    # (test_evaluate): with 512-row batches and 2 epochs it did for some seeds and not
    # others; 128-row batches and 3 epochs won on each of the 4 seeds tried (42, 7, 11, 5).
    ranking_epochs=3,
    ranking_batch_size=128,
    recall_k=20,
)
# Fixtures that train the models or run the pipeline's stages: every test that needs
# one (or a fixture built on one) is marked `trains`, and `make test-quick` leaves it
# out. Tests that train or run stages without them carry the mark themselves.
TRAINED_FIXTURES = {"stages", "simulation", "with_language", "clean_baseline"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if TRAINED_FIXTURES & set(item.fixturenames) or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.trains)
    # The long tests first, the quick ones last: pytest-xdist hands tests out in this
    # order (after the groups), so the quick ones even out the workers' ends instead
    # of one worker finishing a minute-long test alone.
    items.sort(key=lambda item: item.get_closest_marker("trains") is None)


ML_100K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ml-100k")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's standalone S3 server on a free loopback port for the session, with the
    environment every S3 client reads (endpoint and credentials) pointing at it, for
    this process and the runs it starts. Yields the bucket's URL."""
    import boto3

    from tests.servers import free_port, server

    port = free_port()
    log = str(tmp_path_factory.mktemp("s3_server") / "moto.log")
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    environment = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {name: os.environ.get(name) for name in environment}
    with server(command, port, log):
        os.environ.update(environment)
        try:
            boto3.client("s3").create_bucket(Bucket="recsys-test")
            yield "s3://recsys-test"
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@pytest.fixture
def s3_root(s3_server, request) -> str:
    """A fresh prefix in the test bucket, named after the test."""
    return f"{s3_server}/{request.node.name.replace('[', '-').rstrip(']')}-{uuid.uuid4().hex[:6]}"


def built_once(request, tmp_path_factory, name: str, build):
    """``build(directory)``'s JSON-able result, built once per session for all workers.

    Under pytest-xdist the first worker to ask builds it in the workers' shared
    basetemp while holding a lock; the others wait on the lock and read what it
    recorded, so the trained state's tests can run on any worker. A build that
    fails records nothing: the next worker to ask builds again and reports its own
    error. Everything built this way is only read by the tests.
    """
    if not hasattr(request.config, "workerinput"):
        return build(tmp_path_factory.mktemp(name))
    shared = tmp_path_factory.getbasetemp().parent
    record = shared / f"{name}.json"
    with open(shared / f"{name}.lock", "w") as lock, _held(lock):
        if record.exists():
            return json.loads(record.read_text())
        directory = shared / name
        if directory.exists():  # a failed build's leftovers
            shutil.rmtree(directory)
        directory.mkdir()
        value = build(directory)
        record.write_text(json.dumps(value))
        return value


@contextlib.contextmanager
def _held(lock_file):
    fcntl.flock(lock_file, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_data(request, tmp_path_factory) -> str:
    def build(directory):
        generate(str(directory), **TINY)
        return str(directory)

    return built_once(request, tmp_path_factory, "tiny_data", build)


@pytest.fixture(scope="session")
def stages(request, tiny_data, tmp_path_factory) -> dict:
    """The whole DAG run once on the tiny data (nothing serving before it, so push
    pushes version 1 into its own serving root); every output's path, and what the
    stages reported."""

    def build(root):
        from recsys.components.validate.validate import SUMMARY_FILE
        from recsys.pipelines.in_process import run_in_process

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
        # A conditional push blessing, written once here while nothing else reads.
        blessing = repeatable_blessing(paths["blessing"], str(root))
        return {
            "paths": paths,
            "root": str(root),
            "serving_root": str(root / "serving"),
            "repeatable_blessing": blessing,
            "counts": dict(run.artifact("ingest", "ingest_metrics").metadata),
            "join_counts": dict(run.artifact("join_features", "join_metrics").metadata),
            "validation": validation,
            "infra": infra,
            "evaluation": evaluation_of(run),
        }

    return built_once(request, tmp_path_factory, "stages", build)


@pytest.fixture(scope="session")
def pushed_root(request, stages, tmp_path_factory) -> str:
    """A serving root with the stages' models pushed as version 1, for tests that
    only read it."""

    def build(root):
        report = push_stages(stages, str(root))
        assert report["pushed"], report["reason"]
        return str(root)

    return built_once(request, tmp_path_factory, "pushed_root", build)


def evaluation_of(run) -> dict:
    """What evaluate reported: its metrics, the blessing and the reports, as written."""

    def read(output):
        with open(run.artifact("evaluate", output).path) as handle:
            return handle.read()

    return {
        "retrieval": dict(run.artifact("evaluate", "retrieval_metrics").metadata),
        "ranking": dict(run.artifact("evaluate", "ranking_metrics").metadata),
        "funnel": dict(run.artifact("evaluate", "funnel_metrics").metadata),
        "blessing": json.loads(read("blessing")),
        "markdown": read("evaluation_report"),
        "html": read("evaluation_html"),
    }


def repeatable_blessing(blessing_path: str, directory: str) -> str:
    """The stages' blessing, made independent of what serves: a candidate compared with
    the serving version may only replace that version (push re-checks), so the push
    tests, which push one trained candidate many times, use it with
    compare_with_champion off."""
    from recsys.core.contracts import BLESSING_CHAMPION, COMPARED_WITH_CHAMPION

    with open(blessing_path) as handle:
        blessing = json.load(handle)
    blessing[BLESSING_CHAMPION][COMPARED_WITH_CHAMPION] = False
    path = os.path.join(directory, "repeatable_blessing.json")
    with open(path, "w") as handle:
        json.dump(blessing, handle)
    return path


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
    from recsys.core.contracts import (
        SNAPSHOT_AS_OF,
        SNAPSHOT_CANDIDATE_SOURCES,
        SNAPSHOT_EMBEDDINGS,
        SNAPSHOT_HISTORY_LENGTH,
        SNAPSHOT_ITEMS,
        SNAPSHOT_QUERY_MODEL,
        SNAPSHOT_USERS,
    )

    paths = stages["paths"]
    return push(
        blessing or stages["repeatable_blessing"],
        models or {RETRIEVAL: paths["retrieval_model"], RANKING: paths["ranking_model"]},
        paths["warmup_requests"],
        {
            SNAPSHOT_USERS: paths["user_snapshot"],
            SNAPSHOT_ITEMS: paths["item_snapshot"],
            SNAPSHOT_EMBEDDINGS: paths["item_embeddings"],
            SNAPSHOT_QUERY_MODEL: paths["query_model"],
            SNAPSHOT_CANDIDATE_SOURCES: paths[SNAPSHOT_CANDIDATE_SOURCES],
        },
        serving_root,
        config=PushConfig(keep_versions=keep_versions),
        snapshot_meta={
            SNAPSHOT_AS_OF: stages["counts"]["as_of"],
            SNAPSHOT_HISTORY_LENGTH: stages["join_counts"][SNAPSHOT_HISTORY_LENGTH],
        },
        **options,
    )
