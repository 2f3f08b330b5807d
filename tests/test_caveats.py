"""Caveats: where the evaluation's numbers would mislead, the blessing says so."""

import numpy as np
import pandas as pd

from recsys.components.evaluate import caveats
from recsys.components.evaluate.retrieval import RetrievalTask
from recsys.core.contracts import ITEM_ID, UNKNOWN, USER_ID
from recsys.core.features import load_registry
from recsys.serving.rerank import RerankConfig

REGISTRY = load_registry()
CREATOR, CATEGORY = REGISTRY.role("creator"), REGISTRY.role("category")


def task(users: int, with_training_clicks: int) -> RetrievalTask:
    ids = np.array([f"u{i}" for i in range(users)])
    clicks = pd.DataFrame({USER_ID: ids[:with_training_clicks], ITEM_ID: "v1"})
    positives = pd.DataFrame({USER_ID: ids, ITEM_ID: "v2"})
    return RetrievalTask(ids, pd.DataFrame({USER_ID: ids}), positives, clicks)


def test_a_small_eval_set_is_named_with_an_interval():
    [caveat] = caveats.eval_size(task(27, 27), 0.3, 0.173, 50)
    assert "27 eval users" in caveat and "Recall@50 0.300 is known to +-0.173 (95%)" in caveat
    assert caveats.eval_size(task(caveats.MIN_EVAL_USERS, 0), 0.3, 0.05, 50) == []


def test_eval_users_without_training_history_are_counted():
    [caveat] = caveats.training_history(task(10, 2))
    assert caveat.startswith("8 of 10 eval users (80%) have no click in the training days")
    assert caveats.training_history(task(10, 5)) == []


def items(creators, categories=None):
    return pd.DataFrame(
        {
            ITEM_ID: [f"v{i}" for i in range(len(creators))],
            CREATOR: creators,
            CATEGORY: categories or [f"g{i % 3}" for i in range(len(creators))],
        }
    )


def test_caps_over_an_absent_or_single_valued_attribute_are_flagged():
    rules = RerankConfig(max_per_creator=2, max_per_category=0)
    [absent] = caveats.rerank_caps(rules, items([UNKNOWN] * 9 + ["c1"]), REGISTRY)
    assert f"max_per_creator=2: 90% of the catalog's items have no {CREATOR}" in absent
    [single] = caveats.rerank_caps(rules, items(["c1"] * 10), REGISTRY)
    assert "every item with a" in single and "at most 2 of them" in single
    assert caveats.rerank_caps(rules, items([f"c{i % 4}" for i in range(10)]), REGISTRY) == []
    uncapped = RerankConfig(max_per_creator=0)
    assert caveats.rerank_caps(uncapped, items([UNKNOWN] * 10), REGISTRY) == []
    by_category = RerankConfig(max_per_creator=0, max_per_category=1)
    [category] = caveats.rerank_caps(by_category, items(["c1"] * 4, ["drama"] * 4), REGISTRY)
    assert f"max_per_category=1: every item with a {CATEGORY}" in category


def test_rules_over_a_role_no_feature_plays_are_said_to_be_off(tmp_path):
    """Data without creators or upload times (an imported interactions log): the
    creator cap and the freshness boost cannot act, and the caveat says so."""
    from recsys.app.importer import import_data

    log = pd.DataFrame(
        {
            "u": np.arange(40) % 7,
            "i": np.arange(40) % 5,
            "r": np.arange(40) % 5 + 1,
            "t": 1_700_000_000 + np.arange(40) * 20_000,
        }
    )
    log.to_csv(tmp_path / "log.csv", index=False)
    section = {"path": str(tmp_path / "log.csv"), "user": "u", "item": "i"}
    import_data(
        {"interactions": {**section, "timestamp": "t", "label": "r >= 4"}}, str(tmp_path / "out")
    )
    registry = load_registry(str(tmp_path / "out" / "schemas"))
    rules = RerankConfig(max_per_creator=2, freshness_boost=0.2)
    catalog = pd.DataFrame({ITEM_ID: ["1", "2"]})
    creator, freshness = caveats.rerank_caps(rules, catalog, registry)
    assert creator.startswith("rerank max_per_creator=2 is off: no feature has the role creator")
    assert freshness.startswith("rerank freshness_boost=0.2 is off")
