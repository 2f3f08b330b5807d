"""Candidate sources besides the two-tower: counted from the training examples
(train_retrieval), served and merged by reciprocal rank fusion (the funnel), each
checked against a brute-force reading of its definition."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.components.train_retrieval.candidate_sources import (
    PairCounts,
    build_candidate_sources,
)
from recsys.core.contracts import (
    CANDIDATE_SOURCES,
    CO_ENGAGEMENT,
    CO_ENGAGEMENT_FILE,
    ITEM_ID,
    NEIGHBOR_ID,
    POPULAR,
    SOURCES_FILE,
    TWO_TOWER,
    WEIGHT,
)
from recsys.core.features import HISTORY_COLUMNS
from recsys.core.tables import write_dataset
from recsys.serving.candidates import RRF_K, CandidateSources, RankedLists, fuse

HISTORY = HISTORY_COLUMNS[0]


def ranked_lists(n_queries, n_items):
    """A query's list: distinct items, best first."""
    one = st.lists(st.integers(0, n_items - 1), unique=True, max_size=n_items)
    return st.lists(one, min_size=n_queries, max_size=n_queries)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_fusion_is_reciprocal_rank_fusion(data):
    n_queries, n_items = 3, 8
    per_source = {
        name: data.draw(ranked_lists(n_queries, n_items), label=name) for name in CANDIDATE_SOURCES
    }
    lists = {}
    for name, queries in per_source.items():
        query_of = np.repeat(np.arange(n_queries), [len(q) for q in queries])
        rows = np.array([item for q in queries for item in q], dtype=np.int64)
        rank = np.concatenate([np.arange(len(q)) for q in queries]).astype(np.int64)
        lists[name] = RankedLists(query_of, rows, rank)
    merged = fuse(lists, n_queries, n_items)

    expected = []
    for query in range(n_queries):
        scores, best = {}, {}
        for position, name in enumerate(CANDIDATE_SOURCES):
            for rank, item in enumerate(per_source[name][query]):
                scores[item] = scores.get(item, 0.0) + 1 / (RRF_K + 1 + rank)
                if item not in best or rank < best[item][0]:
                    best[item] = (rank, position)
        for item in sorted(scores, key=lambda i: (-scores[i], i)):
            expected.append((query, item, scores[item], best[item][1]))
    assert list(zip(merged.query_of, merged.rows, strict=True)) == [e[:2] for e in expected]
    assert merged.fused_score == pytest.approx([e[2] for e in expected])
    assert list(merged.source) == [e[3] for e in expected]


def test_a_list_without_engaged_items_is_ranked_again_from_zero():
    """What the watched rule removes from the two-tower's list costs it no places in
    the fusion: the kept items move up, in their order, per query."""
    lists = RankedLists.of_matrix(np.array([[5, 2, 7, 1], [2, 3, -1, 4]]))
    n_items = 10
    engaged = np.array([0 * n_items + 5, 0 * n_items + 7, 1 * n_items + 3])
    kept = lists.without(engaged, n_items)
    assert list(zip(kept.query_of, kept.rows, kept.rank, strict=True)) == [
        (0, 2, 0),
        (0, 1, 1),
        (1, 2, 0),
        (1, 4, 1),
    ]


def sources_over(items, neighbors, popular, per_source=3, history=2):
    """CandidateSources over ``items`` with hand-written tables."""
    return CandidateSources(
        pd.Index(items),
        pd.DataFrame({ITEM_ID: popular, WEIGHT: np.arange(len(popular), 0, -1)}),
        pd.DataFrame(neighbors, columns=[ITEM_ID, NEIGHBOR_ID, WEIGHT]),
        {
            "sources": list(CANDIDATE_SOURCES),
            "per_source": per_source,
            "history": history,
            "weight": 0.5,
        },
    )


def test_co_engagement_sums_the_newest_history_items_neighbours():
    items = list("abcdefg")
    sources = sources_over(
        items,
        [
            ("a", "c", 0.5),
            ("a", "d", 0.1),
            ("b", "c", 0.2),
            ("b", "e", 0.4),
            ("b", "a", 0.9),  # in the history: never a candidate
            ("f", "g", 5.0),  # f is third-newest: past history=2
            ("a", "zz", 9.0),  # not in the snapshot: dropped
        ],
        popular=["g", "f"],
    )
    # Newest first: "a", then "b", then "f"; an unknown id is skipped; a cold user has none.
    lists = sources.co_engaged([np.array(["a", "b", "f"], dtype=object), [], ["unknown"]])
    got = list(zip(lists.query_of, np.array(items)[lists.rows], lists.rank, strict=True))
    # c: 0.5 + 0.2 = 0.7, e: 0.4, d: 0.1 (per_source 3 keeps all three).
    assert got == [(0, "c", 0), (0, "e", 1), (0, "d", 2)]

    fewer = sources_over(
        items, [("a", n, w) for n, w in zip("bcdefg", range(6, 0, -1), strict=True)], ["g"]
    )
    one = fewer.co_engaged([["a"]])
    assert list(np.array(items)[one.rows]) == list("bcd")  # the three heaviest


def test_popular_is_the_same_list_for_every_query_and_only_served_sources_come():
    sources = sources_over(list("abcde"), [("a", "b", 1.0)], popular=["e", "zz", "d", "c", "b"])
    lists = sources.lists([["a"], []], n_queries=2)
    popular = lists[POPULAR]
    assert list(popular.query_of) == [0, 0, 0, 1, 1, 1]
    assert list(np.array(list("abcde"))[popular.rows]) == list("edc") * 2  # zz is unknown
    assert list(lists[CO_ENGAGEMENT].rows) == [1]
    sources.served = [TWO_TOWER, POPULAR]
    assert set(sources.lists([["a"], []], 2)) == {POPULAR}


def examples(rows):
    """Training examples (item, clicked, history newest first) as the join writes them."""
    return pd.DataFrame(
        {
            ITEM_ID: [item for item, _, _ in rows],
            "clicked": [clicked for _, clicked, _ in rows],
            HISTORY: [list(history) for _, _, history in rows],
        }
    )


def test_build_counts_clicks_and_cosine_co_engagement(tmp_path):
    rows = [
        ("b", 1, ["a"]),
        ("c", 1, ["b", "a"]),  # history=1: pairs with b only
        ("c", 1, ["a"]),
        ("a", 0, ["c"]),  # not a click: nothing
        ("d", 1, []),
        ("x", 1, ["a"]),  # not in the item snapshot
    ]
    write_dataset(examples(rows), str(tmp_path / "train"))
    write_dataset(pd.DataFrame({ITEM_ID: list("abcd")}), str(tmp_path / "items"))
    out = tmp_path / "sources"
    summary = build_candidate_sources(
        str(tmp_path / "train"),
        str(tmp_path / "items"),
        str(out),
        list(CANDIDATE_SOURCES),
        per_source=5,
        history=1,
        neighbors=5,
        weight=0.5,
        batch_rows=2,  # several batches: the counts merge across them
    )
    popular = pd.read_parquet(out / "popular.parquet")
    assert list(popular[ITEM_ID]) == ["c", "b", "d"]  # 2, 1, 1 clicks (ties: snapshot order)
    assert list(popular[WEIGHT]) == [2, 1, 1]
    pairs = pd.read_parquet(out / CO_ENGAGEMENT_FILE)
    weights = {(s, n): w for s, n, w in pairs[[ITEM_ID, NEIGHBOR_ID, WEIGHT]].to_numpy()}
    # (a, b) once, (b, c) once, (a, c) once, both directions; cosine over clicks
    # (a has none: counted as 1).
    assert weights == pytest.approx(
        {
            ("a", "b"): 1 / math.sqrt(1 * 1),
            ("b", "a"): 1 / math.sqrt(1 * 1),
            ("b", "c"): 1 / math.sqrt(1 * 2),
            ("c", "b"): 1 / math.sqrt(2 * 1),
            ("a", "c"): 1 / math.sqrt(1 * 2),
            ("c", "a"): 1 / math.sqrt(2 * 1),
        }
    )
    assert json.loads((out / SOURCES_FILE).read_text()) == {
        "sources": list(CANDIDATE_SOURCES),
        "per_source": 5,
        "history": 1,
        "weight": 0.5,
    }
    assert summary["co_engagement_pairs"] == 6 and not summary["co_engagement_pruned"]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=60),
    st.integers(1, 3),
)
def test_pair_counts_keep_each_items_strongest_when_over_budget(pairs, keep):
    source, neighbor = (np.array(column) for column in zip(*pairs, strict=True))
    unbounded = PairCounts(6, keep, max_pairs=10**6)
    unbounded.add(source, neighbor)
    counts = pd.Series(1, index=pd.MultiIndex.from_arrays([source, neighbor])).groupby(level=[0, 1])
    assert dict(zip(unbounded.keys, unbounded.counts, strict=True)) == {
        s * 6 + n: c for (s, n), c in counts.sum().items()
    }
    keys, weights = unbounded.strongest(unbounded.counts, keep)
    kept = pd.DataFrame({"source": keys // 6, "weight": weights})
    assert (kept.groupby("source").size() <= keep).all()
    for item, group in pd.DataFrame(
        {"source": unbounded.keys // 6, "weight": unbounded.counts}
    ).groupby("source"):
        strongest = sorted(group["weight"], reverse=True)[:keep]
        assert sorted(kept.loc[kept["source"] == item, "weight"], reverse=True) == strongest
