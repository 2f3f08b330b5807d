import html
import itertools
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.components.evaluate.metrics import (
    auc_margin,
    calibration,
    expected_calibration_error,
    gini,
    list_quality,
    log_loss,
    mean_margin,
    normalized_entropy,
    page_quality,
    rank_by_one_order,
    rank_catalog,
    ratio_margin,
    roc_auc,
)
from recsys.components.evaluate.slices import Slices


def test_masking_and_recall_by_hand():
    users = np.array(["u1", "u2"])
    items = np.array(["a", "b", "c", "d"])
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    masked = pd.DataFrame({"user_id": ["u1"], "item_id": ["a"]})  # u1 already clicked a
    top = rank_catalog(scores, users, items, masked, k=2)
    assert items[top[0]].tolist() == ["b", "c"]
    assert items[top[1]].tolist() == ["d", "c"]
    positives = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["c", "d", "a"]})
    slices = {"first": np.array([True, False])}
    quality = list_quality(top, users, items, positives, [2], slices)
    # u1: 1 of 2 positives in top-2; u2: 0 of 1
    assert quality["all"].recall[2] == 0.25
    assert quality["first"].recall[2] == 0.5 and quality["first"].users == 1
    # u1's hit is at rank 2 of an ideal list with both positives on top; u2 has none
    u1_ndcg = (1 / np.log2(3)) / (1 + 1 / np.log2(3))
    assert np.isclose(quality["all"].ndcg_at_10, u1_ndcg / 2)
    assert np.isclose(quality["first"].ndcg_at_10, u1_ndcg)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(0, 3), min_size=1, max_size=12),  # item scores, with many ties
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 11)), max_size=30),  # masked pairs
    st.integers(1, 6),
    st.booleans(),
)
def test_ranking_by_one_order_equals_ranking_the_broadcast_scores(counts, pairs, k, float32):
    """Popularity's shortcut (sort the catalog once, skip each user's masked items)
    is the stable sort of the masked scores for every user with k unmasked items,
    and rank_catalog (argpartition: any of the items tied at the cut) picks lists of
    the same scores, on float32 as on float64."""
    items = np.array([f"i{j}" for j in range(len(counts))])
    users = np.array([f"u{i}" for i in range(5)])
    masked = pd.DataFrame(
        [(users[u], items[i]) for u, i in pairs if i < len(items)], columns=["user_id", "item_id"]
    )
    scores = np.asarray(counts, dtype=np.float32 if float32 else np.float64)
    broadcast = np.broadcast_to(scores, (len(users), len(items)))
    masked_scores = broadcast.astype(np.float64)
    for user, item in masked.itertuples(index=False):
        masked_scores[int(user[1:]), int(item[1:])] = -np.inf
    stable = np.argsort(-masked_scores, axis=1, kind="stable")[:, : min(k, len(items))]
    enough = np.isfinite(np.take_along_axis(masked_scores, stable, axis=1)).all(axis=1)
    got = rank_by_one_order(scores, users, items, masked, k)
    np.testing.assert_array_equal(got[enough], stable[enough])
    catalog = rank_catalog(broadcast, users, items, masked, k)
    np.testing.assert_array_equal(
        np.take_along_axis(masked_scores, catalog, axis=1),
        np.take_along_axis(masked_scores, stable, axis=1),
    )
    assert broadcast.flags.writeable is False  # masked on a copy, never the caller's


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.lists(st.booleans(), min_size=10, max_size=10), min_size=1, max_size=6),
    st.lists(st.integers(0, 5), min_size=6, max_size=6),
)
def test_ndcg_matches_its_definition(hit_rows, extra_positives):
    """Each user's NDCG@10 from a ranked list of 10 items, some positive, plus
    positives outside the list, against DCG / ideal DCG written out per user."""
    items = np.array([f"i{j}" for j in range(20)])
    users = np.array([f"u{i}" for i in range(len(hit_rows))])
    top = np.tile(np.arange(10), (len(users), 1))
    rows = []
    for user, hits, extra in zip(users, hit_rows, extra_positives[: len(users)], strict=True):
        rows += [(user, items[r]) for r in range(10) if hits[r]]
        rows += [(user, items[10 + j]) for j in range(extra)]
    positives = pd.DataFrame(rows, columns=["user_id", "item_id"])
    quality = list_quality(top, users, items, positives, [10])
    expected = []
    for hits, extra in zip(hit_rows, extra_positives[: len(hit_rows)], strict=True):
        n = sum(hits) + extra
        dcg = sum(1 / np.log2(r + 2) for r in range(10) if hits[r])
        ideal = sum(1 / np.log2(r + 2) for r in range(min(n, 10)))
        expected.append(dcg / ideal if n else 0.0)
    assert np.isclose(quality["all"].ndcg_at_10, np.mean(expected))


def test_slices_split_users_by_training_clicks():
    users = np.array(["new", "light", "heavy"])
    clicks = pd.DataFrame(
        {"user_id": ["light"] + ["heavy"] * 9, "item_id": [f"i{j}" for j in range(10)]}
    )
    slices = Slices.of(users, clicks).masks(users)
    assert slices["new_users"].tolist() == [True, False, False]
    assert slices["heavy_users"].tolist() == [False, False, True]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 5)), min_size=2, max_size=40))
def test_auc_equals_pairwise_definition(pairs):
    labels = np.array([label for label, _ in pairs])
    scores = np.array([score for _, score in pairs], dtype=float)
    positive, negative = scores[labels == 1], scores[labels == 0]
    if len(positive) == 0 or len(negative) == 0:
        assert np.isnan(roc_auc(labels, scores))
        return
    wins = sum(
        1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positive, negative)
    )
    assert np.isclose(roc_auc(labels, scores), wins / (len(positive) * len(negative)))


def test_trained_models_beat_baselines_on_generated_data(stages):
    result = stages["evaluation"]
    retrieval, ranking = result["retrieval"], result["ranking"]
    assert retrieval["recall_at_20"] > retrieval["popularity_recall_at_20"]
    assert ranking["auc"] > 0.7
    assert ranking["logloss"] < ranking["prior_logloss"]
    assert ranking["normalized_entropy"] == pytest.approx(
        ranking["logloss"] / ranking["prior_logloss"]
    )
    assert 0.8 < ranking["calibration_ratio"] < 1.25
    assert 0.0 < ranking["expected_calibration_error"] < 0.1
    assert 0.7 < ranking["watch_time_ratio"] < 1.4
    with open(stages["paths"]["reliability_png"], "rb") as handle:
        assert handle.read().startswith(b"\x89PNG")
    with open(stages["paths"]["blessing"]) as handle:
        blessing = json.load(handle)
    assert blessing["blessed"] is True
    assert "no model serving yet: value thresholds only" in blessing["reason"]
    assert {c["kind"] for c in blessing["checks"]} == {"value", "infra"}
    report = result["html"]
    assert report.count('src="data:image/png;base64,') == 3  # self-contained, no network
    assert "http://" not in report and "https://" not in report
    assert html.escape(result["blessing"]["reason"]) in report
    assert "NDCG@10" in report and "heavy users" in report
    # Slices partition nothing away: their users are among the evaluated ones.
    assert 0 < retrieval["heavy_users_users"] < retrieval["eval_users"]
    assert (
        0.0 <= retrieval["ndcg_at_10"] <= 1.0 and 0.0 < retrieval["catalog_coverage_at_100"] <= 1.0
    )
    assert "| heavy users |" in result["markdown"]
    # Every gated value is shown with its 95% interval, from the same eval data.
    for margin in ("auc_margin", "normalized_entropy_margin", "calibration_ratio_margin"):
        assert 0.0 < ranking[margin] < 0.1
    assert 0.0 < retrieval["recall_at_20_margin"] < 0.2
    values = [c for c in blessing["checks"] if c["kind"] == "value"]
    assert all(c["margin"] > 0 for c in values)
    auc = next(c for c in values if c["metric"] == "ranking AUC")
    assert f"{auc['candidate']:.4f} ± {auc['margin']:.4f}" in result["markdown"]


def test_gini_of_exposure():
    assert gini(np.array([5, 5, 5, 5])) == 0.0
    assert gini(np.array([0, 0, 0, 12])) == pytest.approx(3 / 4)  # (n - 1) / n
    assert gini(np.array([0, 0, 0])) == 0.0
    # Order does not matter; more concentrated is higher.
    assert (
        gini(np.array([3, 1, 0, 0])) == gini(np.array([0, 3, 0, 1])) > gini(np.array([1, 1, 1, 1]))
    )


def test_calibration_bins_and_ece_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 0, 1, 1])
    predictions = np.array([0.1, 0.1, 0.2, 0.2, 0.7, 0.7, 0.9, 0.9])
    curve = calibration(labels, predictions, bins=4)
    assert curve.predicted == pytest.approx([0.1, 0.2, 0.7, 0.9])
    assert curve.observed == pytest.approx([0.0, 1.0, 0.5, 1.0])
    assert expected_calibration_error(curve) == pytest.approx((0.1 + 0.8 + 0.2 + 0.1) / 4)
    assert normalized_entropy(labels, predictions, labels.mean()) == pytest.approx(
        log_loss(labels, predictions) / log_loss(labels, np.full(8, labels.mean()))
    )


def test_page_metrics_by_hand():
    users = np.array(["u1", "u2"])
    positives = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "c", "d"]})
    catalog = np.array(["a", "b", "c", "d"])
    embeddings = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])

    def long(*pages):  # one row per (user, item), in page order
        return pd.DataFrame(
            [(user, item) for user, page in zip(users, pages, strict=True) for item in page],
            columns=["user_id", "item_id"],
        )

    metrics = page_quality(long("ba", "dc"), users, positives, catalog, embeddings, k=2)
    assert metrics.recall == pytest.approx((1 / 2 + 1) / 2)
    ideal_u1 = 1 + 1 / np.log2(3)
    assert metrics.ndcg_at_10 == pytest.approx(((1 / np.log2(3)) / ideal_u1 + 1.0) / 2)
    assert metrics.intra_list_diversity == pytest.approx(0.0)  # both pages: one direction
    assert metrics.catalog_coverage == 1.0 and metrics.exposure_gini == 0.0
    diverse = page_quality(long("ac", "ad"), users, positives, catalog, embeddings, k=2)
    assert diverse.intra_list_diversity == pytest.approx(1.0)
    assert diverse.catalog_coverage == 0.75 and diverse.exposure_gini > 0
    # u2's page empty, u1's of three items (pairwise distances 0, 1, 1), rows of a
    # user not evaluated ignored: recall over both users, diversity over u1's page.
    uneven = page_quality(
        pd.concat([long("abc", ""), pd.DataFrame({"user_id": ["u9"], "item_id": ["d"]})]),
        users,
        positives,
        catalog,
        embeddings,
        k=2,
    )
    assert uneven.recall == pytest.approx((1 / 2 + 0) / 2)  # k=2: a in the top 2, c not
    assert uneven.intra_list_diversity == pytest.approx(2 / 3)
    assert uneven.mean_page_length == pytest.approx(1.5) and uneven.catalog_coverage == 0.75


def test_funnel_evaluation_reports_pages_as_served(stages):
    funnel = stages["evaluation"]["funnel"]
    assert funnel["funnel_k"] == 10 and funnel["funnel_mean_page_length"] == 10
    for name in ("funnel", "retrieval_order"):
        assert 0 < funnel[f"{name}_ndcg_at_10"] <= 1
        assert 0 < funnel[f"{name}_catalog_coverage"] <= 1
        assert 0 <= funnel[f"{name}_exposure_gini"] < 1
    assert 0.5 < funnel["retrieval_score_impression_auc"] < 1
    # The ranker changes the pages: they are not the retrieval order.
    assert funnel["funnel_intra_list_diversity"] != funnel["retrieval_order_intra_list_diversity"]
    assert "| exposure Gini |" in stages["evaluation"]["markdown"]


def test_the_merged_candidates_are_measured_beside_the_two_tower_alone(stages):
    """The gate's Recall@K is the merged candidates' (what the funnel ranks); the
    two-tower's own is reported beside it, and each source's share of the lists."""
    from recsys.core.contracts import CANDIDATE_SOURCES, TWO_TOWER

    retrieval = stages["evaluation"]["retrieval"]
    funnel = stages["evaluation"]["funnel"]
    assert retrieval["two_tower_recall_at_20"] > retrieval["popularity_recall_at_20"]
    assert retrieval["recall_at_20"] != retrieval["two_tower_recall_at_20"]
    shares = [retrieval[f"share_from_{source}"] for source in CANDIDATE_SOURCES]
    assert all(share > 0 for share in shares) and sum(shares) == pytest.approx(1)
    assert retrieval[f"share_from_{TWO_TOWER}"] == max(shares)
    page_shares = [funnel[f"funnel_share_from_{source}"] for source in CANDIDATE_SOURCES]
    assert sum(page_shares) == pytest.approx(1)
    assert funnel["popularity_share_from_popular"] == 1
    gated = next(
        c for c in stages["evaluation"]["blessing"]["checks"] if c["metric"].startswith("retrieval")
    )
    assert gated["candidate"] == pytest.approx(retrieval["recall_at_20"])
    assert "merged by reciprocal rank fusion" in stages["evaluation"]["markdown"]


VARIANTS = ("popularity", "retrieval_order", "ranker_order", "funnel")


def test_the_shipped_funnel_is_the_ground_truth_best_of_the_variants(stages):
    """On the generated sample, whose world evaluate finds under the data root: each
    funnel variant's true value per request, and the shipped default (the funnel
    with the default re-ranking rules) is the best of them, ahead of the retrieval
    order."""
    funnel = stages["evaluation"]["funnel"]
    truth = {name: funnel[f"{name}_true_value"] for name in VARIANTS}
    assert truth["funnel"] >= max(truth.values()) - 1e-9, truth
    assert truth["funnel"] > truth["retrieval_order"] > truth["popularity"]
    # The truth's own best order of the same candidates is the ceiling.
    ceiling = funnel["oracle_order_true_value"]
    assert ceiling >= max(truth.values()) and ceiling >= funnel["click_order_true_value"]
    assert funnel["funnel_true_value_share_of_oracle"] == pytest.approx(truth["funnel"] / ceiling)
    for name in VARIANTS:
        value = funnel[f"{name}_true_value"]
        assert value == pytest.approx(
            funnel[f"{name}_true_clicks"] + funnel[f"{name}_true_watch_seconds"] / 60
        )


def test_off_policy_estimates_find_what_the_ground_truth_says(stages):
    """The logged propensities give IPS, SNIPS and DR estimates of each variant; each is
    within two half-widths of the truth, and each puts popularity last, as the truth
    does. IPS and SNIPS, which need no model, are within half the truth on this
    sample's 2,400 requests (at most 0.31 of it over 11 trainings with different
    seeds); DR's width depends on its reward model, the ranker's watch head, which on
    this little data ranged 0.25 to 0.91 of the truth over the same trainings."""
    funnel = stages["evaluation"]["funnel"]
    assert funnel["logged_requests"] > 1000
    for estimator in ("ips", "snips", "dr"):
        for reward in ("value", "clicks", "watch_seconds"):
            for name in VARIANTS:
                estimate = funnel[f"{name}_{estimator}_{reward}"]
                margin = funnel[f"{name}_{estimator}_{reward}_margin"]
                truth = funnel[f"{name}_true_{reward}"]
                assert 0 < margin < (0.5 * truth if estimator != "dr" else truth)
                assert abs(estimate - truth) <= 2 * margin, (name, estimator, reward)
        values = {name: funnel[f"{name}_{estimator}_value"] for name in VARIANTS}
        assert min(values, key=values.get) == "popularity", (estimator, values)
    report = stages["evaluation"]["html"]
    assert "What each stage adds" in report and "ranker order" in report
    assert "| DR value |" in stages["evaluation"]["markdown"]


def test_without_propensities_evaluation_says_why_there_are_no_estimates():
    from recsys.components.evaluate.funnel import logged_requests

    events = pd.DataFrame(
        {"user_id": ["u"], "item_id": ["i"], "event_ts": [0], "clicked": [1], "watch_seconds": [1]}
    )
    assert logged_requests(events) == (None, "the impressions carry no propensity column")
    partly = events.assign(propensity=[np.nan])
    assert logged_requests(partly)[1] == "1 of 1 eval impressions have no propensity"


def test_interval_margins_cover_the_spread_of_resampled_metrics():
    """Each 95% half-width against the spread of the metric over many eval sets drawn
    from one known distribution: the closed forms are within 15% of the simulated
    1.96 standard deviations (DeLong for AUC, delta method for the ratio)."""
    rng = np.random.default_rng(0)
    n, draws = 2000, 300
    aucs, ratios, recalls = [], [], []
    for _ in range(draws):
        labels = (rng.random(n) < 0.2).astype(int)
        scores = rng.normal(labels * 1.0, 1.0)
        probabilities = np.clip(0.2 + 0.1 * scores, 0.01, 0.99)
        aucs.append(roc_auc(labels, scores))
        ratios.append(probabilities.mean() / labels.mean())
        recalls.append(rng.binomial(10, 0.3, 300).mean() / 10)
    labels = (rng.random(n) < 0.2).astype(int)
    scores = rng.normal(labels * 1.0, 1.0)
    probabilities = np.clip(0.2 + 0.1 * scores, 0.01, 0.99)
    simulated = {
        "auc": 1.96 * np.std(aucs),
        "ratio": 1.96 * np.std(ratios),
        "recall": 1.96 * np.std(recalls),
    }
    computed = {
        "auc": auc_margin(labels, scores),
        "ratio": ratio_margin(probabilities, labels),
        "recall": mean_margin(rng.binomial(10, 0.3, 300) / 10),
    }
    for name, expected in simulated.items():
        assert computed[name] == pytest.approx(expected, rel=0.15), name
    assert np.isnan(mean_margin(np.array([0.5])))
    assert np.isnan(auc_margin(np.zeros(10), np.arange(10)))


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.integers(1, 50), min_size=0, max_size=12),
    engaged=st.lists(st.sets(st.integers(0, 14)), min_size=1, max_size=4),
    k=st.integers(1, 5),
)
def test_the_popularity_baseline_gives_each_user_the_most_clicked_items_they_have_not_seen(
    counts, engaged, k
):
    """Per query, the k most clicked items left after the user's engaged ones (fewer
    only when the catalog runs out), best first, "" padding the rest."""
    from recsys.components.evaluate.funnel import PopularityRetrieval
    from recsys.core.contracts import ITEM_IDS, SCORES

    clicks = pd.Series(counts, index=[f"i{i}" for i in range(len(counts))], dtype=float)
    retrieval = PopularityRetrieval(None, clicks, k)
    retrieval.leave_out([[f"i{i}" for i in items] for items in engaged])
    out = retrieval.retrieve({"user_id": np.array(["u"] * len(engaged), dtype=object)})
    ranked = clicks.sort_values(ascending=False, kind="stable")
    for query, items in enumerate(engaged):
        expected = [i for i in ranked.index if int(i[1:]) not in items][:k]
        got = [item for item in out[ITEM_IDS][query] if item != ""]
        assert got == expected
        assert list(out[SCORES][query][: len(got)]) == list(ranked[expected].astype(np.float32))
