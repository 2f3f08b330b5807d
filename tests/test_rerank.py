"""Each re-ranking rule on hand-made candidates, then properties of the whole."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.core.contracts import UNKNOWN
from recsys.serving.rerank import Candidates, RerankConfig, rerank


def candidates(ids, scores, creators=None, categories=None, ages=None, embeddings=None):
    n = len(ids)
    return Candidates(
        np.array(ids, dtype=object),
        np.array(scores, dtype=float),
        np.array(creators or ["c"] * n, dtype=object),
        np.array(categories or ["g"] * n, dtype=object),
        np.array(ages or [100.0] * n),
        embeddings,
    )


def page(result, cands):
    return list(cands.item_ids[result.positions])


NO_CAPS = dict(max_per_creator=0, max_per_category=0)


def test_orders_by_score_and_cuts_to_k():
    cands = candidates(["a", "b", "c", "d"], [0.1, 0.9, 0.5, 0.7])
    result = rerank(cands, RerankConfig(k=3, **NO_CAPS))
    assert page(result, cands) == ["b", "d", "c"]
    np.testing.assert_allclose(result.scores, [0.9, 0.7, 0.5])


def test_blocklist_removes_items_whatever_their_score():
    cands = candidates(["a", "b", "c"], [0.9, 0.8, 0.1])
    result = rerank(cands, RerankConfig(k=3, blocklist=frozenset({"a"}), **NO_CAPS))
    assert page(result, cands) == ["b", "c"]
    assert result.removed["blocklist"] == 1


def test_duplicates_keep_the_best_scored_copy():
    cands = candidates(["a", "b", "a", "b"], [0.2, 0.5, 0.9, 0.1], creators=["x", "y", "z", "w"])
    result = rerank(cands, RerankConfig(k=4, **NO_CAPS))
    assert page(result, cands) == ["a", "b"]
    assert list(result.positions) == [2, 1]  # the copies scored 0.9 and 0.5
    assert result.removed["duplicate"] == 2


def test_watched_items_are_dropped_unless_disabled():
    cands = candidates(["a", "b", "c"], [0.9, 0.8, 0.7])
    assert page(rerank(cands, RerankConfig(k=3, **NO_CAPS), watched=["a", "zz"]), cands) == [
        "b",
        "c",
    ]
    assert page(
        rerank(cands, RerankConfig(k=3, drop_watched=False, **NO_CAPS), watched=["a"]), cands
    ) == ["a", "b", "c"]


def test_creator_cap_holds_within_the_page_and_backfills_from_others():
    cands = candidates(
        ["a", "b", "c", "d", "e"], [0.9, 0.8, 0.7, 0.6, 0.5], creators=["x", "x", "x", "y", "y"]
    )
    result = rerank(cands, RerankConfig(k=4, max_per_creator=2))
    assert page(result, cands) == ["a", "b", "d", "e"]


def test_unknown_creators_are_not_one_creator():
    """A catalog without creators (MovieLens) gets full pages, not max_per_creator items."""
    ids = [f"i{j}" for j in range(12)]
    cands = candidates(ids, np.linspace(1, 0, 12).tolist(), creators=[UNKNOWN] * 10 + ["x"] * 2)
    result = rerank(cands, RerankConfig(k=10, max_per_creator=2))
    assert page(result, cands) == ids[:10] and result.removed["capped"] == 0
    # Known creators stay capped: i9, the third "x", gives way to the unknown i8.
    cands = candidates(ids, np.linspace(0, 1, 12).tolist(), creators=[UNKNOWN] * 9 + ["x"] * 3)
    assert page(rerank(cands, RerankConfig(k=3, max_per_creator=2)), cands) == ["i11", "i10", "i8"]


def test_category_cap_and_a_page_shorter_than_k_when_caps_exhaust_candidates():
    cands = candidates(
        ["a", "b", "c", "d"],
        [0.9, 0.8, 0.7, 0.6],
        creators=["1", "2", "3", "4"],
        categories=["m", "m", "m", "n"],
    )
    result = rerank(cands, RerankConfig(k=4, max_per_creator=0, max_per_category=1))
    assert page(result, cands) == ["a", "d"]
    assert result.removed["capped"] == 2


def test_freshness_boost_lifts_new_items_by_the_configured_factor():
    cands = candidates(["old", "new"], [1.0, 0.9], ages=[365.0, 0.0])
    plain = rerank(cands, RerankConfig(k=2, **NO_CAPS))
    boosted = rerank(cands, RerankConfig(k=2, freshness_boost=0.2, **NO_CAPS))
    assert page(plain, cands) == ["old", "new"]
    assert page(boosted, cands) == ["new", "old"]
    np.testing.assert_allclose(boosted.scores[0], 0.9 * 1.2)
    # One half-life later the boost is halved.
    aged = candidates(["x"], [1.0], ages=[3.0])
    np.testing.assert_allclose(
        rerank(aged, RerankConfig(k=1, freshness_boost=0.2, **NO_CAPS)).scores, [1.1]
    )


def test_mmr_prefers_a_different_item_over_a_near_copy():
    # b is almost a's embedding; c points elsewhere and scores a little lower.
    embeddings = np.array([[1.0, 0.0], [0.99, 0.14], [0.0, 1.0], [0.7, 0.7]])
    cands = candidates(["a", "b", "c", "d"], [1.0, 0.95, 0.9, 0.0], embeddings=embeddings)
    relevance_only = rerank(cands, RerankConfig(k=2, **NO_CAPS))
    diverse = rerank(cands, RerankConfig(k=2, mmr_lambda=0.5, **NO_CAPS))
    assert page(relevance_only, cands) == ["a", "b"]
    assert page(diverse, cands) == ["a", "c"]
    # Without embeddings MMR cannot apply and the score order stands.
    cands.embeddings = None
    assert page(rerank(cands, RerankConfig(k=2, mmr_lambda=0.5, **NO_CAPS)), cands) == ["a", "b"]


def test_bad_configuration_is_refused_with_the_allowed_range():
    with pytest.raises(ValueError, match="mmr_lambda must be in"):
        RerankConfig(mmr_lambda=1.5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        RerankConfig(k=0)


@st.composite
def candidate_sets(draw):
    n = draw(st.integers(0, 40))
    ids = draw(st.lists(st.sampled_from([f"i{j}" for j in range(25)]), min_size=n, max_size=n))
    scores = draw(st.lists(st.floats(0, 1), min_size=n, max_size=n))
    creators = draw(st.lists(st.sampled_from([*"abcd", UNKNOWN]), min_size=n, max_size=n))
    categories = draw(st.lists(st.sampled_from("xyz"), min_size=n, max_size=n))
    embeddings = np.asarray(
        draw(st.lists(st.lists(st.floats(-1, 1), min_size=3, max_size=3), min_size=n, max_size=n)),
        dtype=float,
    ).reshape(n, 3)
    return candidates(ids, scores, creators, categories, [1.0] * n, embeddings)


@settings(max_examples=150, deadline=None)
@given(
    cands=candidate_sets(),
    k=st.integers(1, 12),
    per_creator=st.integers(0, 3),
    per_category=st.integers(0, 3),
    mmr=st.sampled_from([1.0, 0.7, 0.3]),
    watched=st.lists(st.sampled_from([f"i{j}" for j in range(25)]), max_size=5),
    blocked=st.lists(st.sampled_from([f"i{j}" for j in range(25)]), max_size=3),
)
def test_pages_respect_every_rule_and_are_deterministic(
    cands, k, per_creator, per_category, mmr, watched, blocked
):
    config = RerankConfig(
        k=k,
        max_per_creator=per_creator,
        max_per_category=per_category,
        mmr_lambda=mmr,
        blocklist=frozenset(blocked),
    )
    result = rerank(cands, config, watched)
    chosen = page(result, cands)
    assert len(chosen) <= k and len(set(chosen)) == len(chosen)
    assert not set(chosen) & (set(watched) | set(blocked))
    for values, limit in ((cands.creator_ids, per_creator), (cands.categories, per_category)):
        if limit:
            shown = values[result.positions]
            known = shown[shown != UNKNOWN]
            assert max(np.unique(known, return_counts=True)[1], default=0) <= limit
    allowed = set(cands.item_ids) - set(watched) - set(blocked)
    if not per_creator and not per_category:
        assert len(chosen) == min(k, len(allowed))  # without caps the page fills up
    again = rerank(cands, config, watched)
    np.testing.assert_array_equal(again.positions, result.positions)
