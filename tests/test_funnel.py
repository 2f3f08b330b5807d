"""The online funnel on pushed models: in process, and through TF Serving's gRPC
and REST protocols (served by tests/tf_serving_double.py, since TF Serving itself
cannot be installed here), plus the serving log it writes."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest

from recsys.core.tables import read_dataset
from recsys.serving import Context, Funnel, GrpcBackend, RerankConfig, RestBackend, ServingLog
from tests.conftest import EVAL_DAYS, LOOKBACK_DAYS
from tests.tf_serving_double import ServedModels, start_grpc, start_rest


def request_time(stages):
    """A request on the last day of the window (the span the serving log covers)."""
    return pd.Timestamp(stages["counts"]["as_of"] - 3600, unit="s", tz="UTC")


def test_recommend_applies_the_rules_to_ranked_candidates(stages, pushed_root):
    funnel = Funnel.from_serving_root(
        pushed_root, rerank_config=RerankConfig(k=10, max_per_creator=2, max_per_category=4)
    )
    user = funnel.features.user_index[0]
    result = funnel.recommend(user, Context(request_time(stages)))
    page = result.items
    assert len(page) == 10 and result.known_user
    assert page["item_id"].is_unique
    assert page["score"].is_monotonic_decreasing  # no MMR or freshness: score order
    assert page.groupby("creator_id").size().max() <= 2
    assert page.groupby("category").size().max() <= 4
    history = set(funnel.features.users["user_history_items"][0])
    engaged = history | set(funnel.features.users["user_watched_items"][0])
    assert not engaged & set(page["item_id"])
    # Counted where they were left out: of the retrieval model's own candidates.
    assert result.removed["watched"] == len(engaged & set(_retrieved(funnel, user, stages)))
    assert ((page["click_probability"] > 0) & (page["click_probability"] < 1)).all()
    assert set(result.milliseconds) == {"retrieval", "ranking", "rerank"}

    cold = funnel.recommend("someone-new", Context(request_time(stages)), k=5)
    assert len(cold.items) == 5 and not cold.known_user


def _retrieved(funnel, user, stages):
    """The retrieval model's own top-K for the user."""
    from recsys.core.requests import raw_arrays

    query = {**funnel.features.user(user)[0], **Context(request_time(stages)).columns()}
    out = funnel.backend.predict("retrieval", raw_arrays(query, funnel.retrieval_signature))
    return [v.decode() for v in out["item_ids"][0]]


def test_candidates_come_from_every_source_and_the_page_says_which(stages, pushed_root):
    from recsys.core.contracts import (
        CANDIDATE_SOURCES,
        CO_ENGAGEMENT,
        POPULAR,
        TWO_TOWER,
        WATCHED_ITEMS,
    )
    from recsys.core.requests import raw_arrays
    from recsys.serving.candidates import RankedLists, engaged_keys, fuse

    funnel = Funnel.from_serving_root(pushed_root)
    sources = funnel.features.sources
    assert sources is not None and sources.served == list(CANDIDATE_SOURCES)
    at = Context(request_time(stages)).columns()
    histories = funnel.features.users["user_history_items"]
    user = funnel.features.user_index[int(np.argmax([len(h) for h in histories]))]
    query = {**funnel.features.user(user)[0], **at}
    scored = funnel.candidates(query)
    found = {CANDIDATE_SOURCES[s] for s in scored.sources}
    assert found == {TWO_TOWER, CO_ENGAGEMENT, POPULAR}
    assert len(scored.item_ids) == len(set(scored.item_ids)) <= sources.per_source
    # The retrieval model's top-K fused with the sources' lists, each without what the
    # user engaged with, the best per_source kept, in fused order (fuse itself:
    # test_candidate_sources).
    out = funnel.backend.predict("retrieval", raw_arrays(query, funnel.retrieval_signature))
    two_tower = funnel.features.item_rows([v.decode() for v in out["item_ids"][0]])
    engaged = engaged_keys(
        [[*query["user_history_items"][0], *query[WATCHED_ITEMS][0]]], funnel.features.item_index
    )
    assert len(engaged) > 0
    expected = fuse(
        {
            TWO_TOWER: RankedLists.of_matrix(two_tower[None, :]).without(
                engaged, len(funnel.catalog)
            ),
            **sources.lists(query["user_history_items"], 1, engaged),
        },
        1,
        len(funnel.catalog),
        sources.fusion_weights,
    ).head(sources.per_source)
    assert list(scored.item_ids) == list(funnel.catalog[expected.rows])
    assert (np.diff(scored.retrieval_scores) <= 0).all()
    co_engaged = scored.item_ids[scored.sources == CANDIDATE_SOURCES.index(CO_ENGAGEMENT)]
    assert not set(co_engaged) & set(funnel.features.user(user)[0]["user_history_items"][0])

    cold = funnel.candidates({**funnel.features.registry.missing_row("user", "new"), **at})
    assert CANDIDATE_SOURCES.index(CO_ENGAGEMENT) not in set(cold.sources)  # no history
    assert CANDIDATE_SOURCES.index(POPULAR) in set(cold.sources)

    page = funnel.recommend(user, Context(request_time(stages))).items
    assert set(page["source"]) <= set(CANDIDATE_SOURCES)
    funnel.features.sources = None  # a push without sources: the two-tower's alone
    alone = funnel.candidates(query)
    assert set(alone.sources) == {CANDIDATE_SOURCES.index(TWO_TOWER)}
    assert set(alone.item_ids) <= {v.decode() for v in out["item_ids"][0]}


def test_mmr_makes_pages_more_diverse(stages, pushed_root):
    """Mean pairwise cosine similarity of the page's item embeddings drops as lambda
    goes down, over the same users."""

    def similarity(mmr_lambda):
        funnel = Funnel.from_serving_root(
            pushed_root, rerank_config=RerankConfig(k=10, max_per_creator=0, mmr_lambda=mmr_lambda)
        )
        values = []
        for user in funnel.features.user_index[:20]:
            page = funnel.recommend(user, Context(request_time(stages))).items
            rows = funnel.features.item_rows(page["item_id"].to_numpy())
            vectors = funnel.features.embeddings[rows]
            vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
            sims = vectors @ vectors.T
            values.append(sims[np.triu_indices(len(rows), 1)].mean())
        return np.mean(values)

    assert similarity(0.3) < similarity(1.0) - 0.02


def test_grpc_and_rest_backends_serve_the_same_pages(stages, pushed_root):
    models = ServedModels(pushed_root, ["retrieval", "ranking"])
    grpc_server, target = start_grpc(models)
    http_server, url = start_rest(models)
    try:
        at = Context(request_time(stages))
        local = Funnel.from_serving_root(pushed_root)
        grpc_backend = GrpcBackend(target)
        remote = {
            "grpc": Funnel.from_serving_root(pushed_root, backend=grpc_backend),
            "rest": Funnel.from_serving_root(pushed_root, backend=RestBackend(url)),
        }
        for user in list(local.features.user_index[:3]) + ["someone-new"]:
            expected = local.recommend(user, at).items
            for name, funnel in remote.items():
                pd.testing.assert_frame_equal(
                    funnel.recommend(user, at).items,
                    expected,
                    check_exact=False,
                    rtol=1e-5,
                    obj=name,
                )
        assert models.requests == {"retrieval": 8, "ranking": 8}  # 4 users x 2 protocols
        grpc_backend.close()
    finally:
        grpc_server.stop(None)
        http_server.shutdown()


def test_rest_errors_name_the_model(pushed_root):
    models = ServedModels(pushed_root, ["retrieval"])
    http_server, url = start_rest(models)
    try:
        with pytest.raises(Exception, match="404"):
            RestBackend(url).signature("ranking")
    finally:
        http_server.shutdown()


def test_serving_log_is_ingested_as_the_serving_log(stages, pushed_root, tiny_data, tmp_path):
    """What the funnel logs passes ingest's serving-log contract row for row, with
    the features it served."""
    from recsys.components.ingest.config import IngestConfig
    from recsys.components.ingest.ingest import ingest
    from recsys.core.contracts import INGEST_OUTPUTS

    log_dir = tmp_path / "data" / "serving_log"
    log = ServingLog(str(log_dir), rows_per_file=25)
    funnel = Funnel.from_serving_root(
        pushed_root, serving_log=log, rerank_config=RerankConfig(k=10)
    )
    users = list(funnel.features.user_index[:6])
    pages = {user: funnel.recommend(user, Context(request_time(stages))).items for user in users}
    log.close()
    assert len(os.listdir(log_dir)) >= 2  # flushed every 25 rows, then on close
    logged = read_dataset(str(log_dir))
    assert len(logged) == 60 and logged["event_id"].is_unique
    for user, page in pages.items():
        mine = logged[logged["user_id"] == user]
        assert list(mine["item_id"]) == list(page["item_id"])
        items = funnel.features.item_rows(mine["item_id"].to_numpy())
        np.testing.assert_allclose(mine["item_ctr_7d"], funnel.features.items["item_ctr_7d"][items])

    data = tmp_path / "data"
    shutil.copytree(
        tiny_data, data, ignore=shutil.ignore_patterns("serving_log*"), dirs_exist_ok=True
    )
    outputs = {name: str(tmp_path / "out" / name) for name in INGEST_OUTPUTS}
    counts = ingest(
        str(data), outputs, IngestConfig(lookback_days=LOOKBACK_DAYS, eval_days=EVAL_DAYS)
    )
    assert counts["serving_log_read"] == 60 and counts["serving_log_quarantined"] == 0
    assert counts["serving_log"] == 60
