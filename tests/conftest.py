"""Shared fixtures: a tiny generated dataset and the stages run on it once.

Stage tests call the plain stage functions (no KFP); the end-to-end tests in
test_e2e.py run the compiled pipeline instead.
"""

import os

import recsys  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow loads)

import pytest

from recsys.data_check import INGESTED as INGEST_OUTPUTS
from recsys.data_check import JOINED as JOIN_OUTPUTS
from recsys.data_check import TABLES, VALIDATED
from recsys.generate import generate
from schemas import schema_path

TINY = dict(users=300, items=120, days=10, seed=3)
LOOKBACK_DAYS, EVAL_DAYS = 10, 3
ML_100K = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ml-100k")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tiny_data"))
    generate(out, **TINY)
    return out


@pytest.fixture(scope="session")
def stages(tiny_data, tmp_path_factory):
    """Every stage function run once on the tiny data; returns all paths."""
    from components.evaluate.evaluate import evaluate
    from components.evaluate.gate import Thresholds
    from components.infra_validate.infra_validate import infra_validate
    from components.rerank.rerank import RerankConfig
    from components.features.features import join_features, transform
    from components.ingest.ingest import ingest
    from components.train_ranking import train_ranking
    from components.train_retrieval import train_retrieval
    from components.validate.validate import validate

    root = tmp_path_factory.mktemp("stages")
    paths = {name: str(root / name) for name in
             INGEST_OUTPUTS + JOIN_OUTPUTS
             + ["stats", "anomalies", "statistics_root", "transform_graph", "transformed_train",
                "transformed_eval", "retrieval_model", "query_model", "item_embeddings",
                "ranking_model", "eval_item_snapshot", "warmup_requests"]}
    paths["blessing"] = str(root / "blessing.json")
    paths["infra_validation"] = str(root / "infra_validation.json")
    counts = ingest(tiny_data, "", LOOKBACK_DAYS, EVAL_DAYS, {n: paths[n] for n in INGEST_OUTPUTS})
    join_counts = join_features({n: paths[n] for n in TABLES}, counts["as_of"], "",
                                {n: paths[n] for n in JOIN_OUTPUTS + ["eval_item_snapshot"]},
                                eval_start=counts["eval_start"])
    validation = validate({n: paths[n] for n in VALIDATED}, "", paths["stats"],
                          paths["anomalies"], counts["span_start"],
                          statistics_root=paths["statistics_root"])
    transform(paths["train_examples"], paths["eval_examples"], schema_path("examples"),
              paths["transform_graph"], {"train": paths["transformed_train"],
                                         "eval": paths["transformed_eval"]}, str(root / "tft_tmp"))
    retrieval_config = train_retrieval.RetrievalConfig(epochs=3, batch_size=256, top_k=50)
    model, _ = train_retrieval.train(paths["transformed_train"], paths["transformed_eval"],
                                     paths["transform_graph"], retrieval_config)
    train_retrieval.export(model, paths["transform_graph"], paths["item_snapshot"],
                           retrieval_config, paths["retrieval_model"], paths["query_model"],
                           paths["item_embeddings"])
    ranking_config = train_ranking.RankingConfig(epochs=2, batch_size=512)
    model, _ = train_ranking.train(paths["transformed_train"], paths["transformed_eval"],
                                   paths["transform_graph"], ranking_config)
    train_ranking.export(model, paths["transform_graph"], paths["ranking_model"])
    infra = infra_validate({"retrieval": paths["retrieval_model"],
                            "ranking": paths["ranking_model"]}, paths["eval_examples"],
                           paths["warmup_requests"], paths["infra_validation"])
    result = evaluate(paths["train_examples"], paths["eval_examples"], paths["query_model"],
                      paths["item_embeddings"], paths["retrieval_model"], paths["ranking_model"],
                      paths["eval_item_snapshot"], paths["infra_validation"],
                      Thresholds(recall_k=20), RerankConfig(k=10, max_per_creator=2),
                      paths["blessing"])
    return {"paths": paths, "counts": counts, "join_counts": join_counts,
            "validation": validation, "infra": infra, "evaluation": result, "root": root}


def push_stages(stages, serving_root: str, blessing: str = "", models: dict | None = None,
                **options) -> dict:
    """Push the stages' models (or ``models``) with their warmup requests and snapshots."""
    from components.push.push import push

    paths = stages["paths"]
    return push(blessing or paths["blessing"],
                models or {"retrieval": paths["retrieval_model"], "ranking": paths["ranking_model"]},
                paths["warmup_requests"],
                {"users": paths["user_snapshot"], "items": paths["item_snapshot"],
                 "item_embeddings": paths["item_embeddings"]}, serving_root, **options)
