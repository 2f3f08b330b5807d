"""Off-policy estimators against a known truth, and the synthetic world's oracle
against the data the generator drew from it."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.app.generate import generate
from recsys.components.evaluate import offpolicy
from recsys.components.evaluate.offpolicy import clustered_ratio, estimate, rewards, true_value
from recsys.core.contracts import (
    CLICK_PROBABILITY,
    CLICKED,
    EVENT_TS,
    EXPECTED_WATCH_SECONDS,
    ITEM_ID,
    PROPENSITY,
    USER_ID,
    WATCH_SECONDS,
)
from recsys.core.ground_truth import (
    WATCH_MIN,
    Oracle,
    expected_watched_fraction,
    watched_fraction_scale,
)
from recsys.core.tables import read_raw_table
from recsys.serving.exploration import ExplorationConfig, explore

VALUED_IN = rewards(watch_weight=1.0)


class Bandit:
    """Users with known click probabilities over a small catalog, a logging policy
    with known propensities, and pages: everything's true value is computable."""

    def __init__(self, seed: int, users: int = 40, items: int = 30, k: int = 5):
        rng = np.random.default_rng(seed)
        self.users = np.array([f"u{u}" for u in range(users)], dtype=object)
        self.items = np.array([f"i{i}" for i in range(items)], dtype=object)
        self.click = rng.beta(1, 3, size=(users, items))
        logits = rng.normal(size=(users, items)) * 1.5
        self.logging = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        self.k = k
        self.rng = rng

    def log(self, requests_per_user: int) -> pd.DataFrame:
        n_users, n_items = self.click.shape
        user = np.repeat(np.arange(n_users), requests_per_user)
        uniform = self.rng.random(len(user))
        item = (uniform[:, None] > np.cumsum(self.logging[user], axis=1)).sum(axis=1)
        item = np.minimum(item, n_items - 1)
        clicked = self.rng.random(len(user)) < self.click[user, item]
        return pd.DataFrame(
            {
                USER_ID: self.users[user],
                ITEM_ID: self.items[item],
                EVENT_TS: np.arange(len(user)),  # one request per impression
                CLICKED: clicked.astype(int),
                WATCH_SECONDS: np.where(clicked, 60.0, 0.0),
                PROPENSITY: self.logging[user, item],
            }
        )

    def pages(self, scores: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
        top = np.argsort(-scores, axis=1)[:, : self.k]
        rows = np.repeat(np.arange(len(self.users)), self.k)
        return pd.DataFrame(
            {
                USER_ID: self.users[rows],
                ITEM_ID: self.items[top.ravel()],
                CLICK_PROBABILITY: predicted[rows, top.ravel()],
                EXPECTED_WATCH_SECONDS: 60.0,
            }
        )

    def truth(self, pages: pd.DataFrame) -> float:
        """Expected clicks per request: each user makes the same number of requests."""
        users = pd.Index(self.users).get_indexer(pages[USER_ID])
        items = pd.Index(self.items).get_indexer(pages[ITEM_ID])
        return float(self.click[users, items].sum() / len(self.users))


def test_ips_snips_and_dr_cover_the_truth_and_dm_does_not_with_a_wrong_model():
    bandit = Bandit(seed=0)
    logged = bandit.log(requests_per_user=400)
    # A target unlike the logging policy (the best items), valued with a model that
    # is wrong by a constant: DM inherits the error, DR corrects it.
    pages = bandit.pages(bandit.click, np.full_like(bandit.click, 0.5))
    truth = bandit.truth(pages)
    clicks = estimate(pages, logged, VALUED_IN)["clicks"]
    for name in ("ips", "snips", "dr"):
        low, high = clicks[name].interval
        assert low <= truth <= high, (name, clicks[name], truth)
        assert clicks[name].margin < 0.2 * truth
    low, high = clicks["dm"].interval
    assert not low <= truth <= high
    # A perfect model leaves DR nothing to correct: it is then the truth, nearly exactly.
    perfect = bandit.pages(bandit.click, bandit.click)
    dr = estimate(perfect, logged, VALUED_IN)["clicks"]["dr"]
    assert dr.value == pytest.approx(bandit.truth(perfect), rel=0.02)
    assert dr.margin < clicks["ips"].margin


def test_intervals_cover_the_truth_about_95_percent_of_the_time():
    bandit = Bandit(seed=1, users=30)
    pages = bandit.pages(bandit.click + bandit.logging, np.full_like(bandit.click, 0.3))
    truth = bandit.truth(pages)
    covered = {name: 0 for name in ("ips", "snips", "dr")}
    trials = 200
    for _ in range(trials):
        clicks = estimate(pages, bandit.log(requests_per_user=60), VALUED_IN)["clicks"]
        for name in covered:
            low, high = clicks[name].interval
            covered[name] += low <= truth <= high
    for name, count in covered.items():
        assert 0.88 <= count / trials <= 0.995, (name, count)


def test_a_page_that_never_shows_the_logged_items_is_worth_nothing_to_ips():
    bandit = Bandit(seed=2)
    logged = bandit.log(requests_per_user=5)
    pages = bandit.pages(bandit.click, bandit.click)
    pages[ITEM_ID] = "never-logged"
    clicks = estimate(pages, logged, VALUED_IN)["clicks"]
    assert clicks["ips"].value == 0.0
    assert np.isnan(clicks["snips"].value)  # no weight at all: undefined, not 0


def test_a_request_without_a_page_is_worth_nothing_and_still_counted():
    """A user whose page is empty (everything already watched): their requests add
    nothing to any estimator's sum and still count in its average, so each estimate
    is the one over the other users' requests scaled by their share of requests."""
    bandit = Bandit(seed=3)
    pages = bandit.pages(bandit.click, bandit.click)
    logged = bandit.log(4)
    others = logged[USER_ID] != "u0"
    without = estimate(pages[pages[USER_ID] != "u0"], logged, VALUED_IN)["clicks"]
    among_others = estimate(pages, logged[others].reset_index(drop=True), VALUED_IN)["clicks"]
    share = others.mean()
    for name in ("ips", "dr", "dm"):
        assert without[name].value == pytest.approx(among_others[name].value * share)
    # SNIPS: the same weighted sum over a normalizer one larger per row of u0's.
    mine = logged[others]
    in_page = mine.merge(pages.assign(shown=True), on=[USER_ID, ITEM_ID], how="left")["shown"]
    weight = in_page.fillna(False).to_numpy(bool) / mine[PROPENSITY].to_numpy()
    normalizer = (weight / bandit.k).sum()
    expected = among_others["snips"].value * normalizer / (normalizer + (~others).sum())
    assert without["snips"].value == pytest.approx(expected)
    assert np.isfinite([estimate.value for estimate in without.values()]).all()


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 4),
            st.floats(-10, 10, allow_nan=False),
            st.floats(0.1, 5, allow_nan=False),
        ),
        min_size=2,
        max_size=40,
    )
)
def test_clustered_ratio_is_the_ratio_of_sums_with_the_cluster_delta_method(rows):
    clusters, numerators, denominators = (np.array(column) for column in zip(*rows, strict=True))
    result = clustered_ratio(numerators, denominators, clusters)
    ratio = numerators.sum() / denominators.sum()
    assert result.value == pytest.approx(ratio)
    ids = np.unique(clusters)
    if len(ids) < 2:
        assert np.isnan(result.margin)
        return
    a = np.array([numerators[clusters == c].sum() for c in ids])
    b = np.array([denominators[clusters == c].sum() for c in ids])
    variance = len(ids) / (len(ids) - 1) * ((a - ratio * b) ** 2).sum() / b.sum() ** 2
    assert result.margin == pytest.approx(1.959964 * np.sqrt(variance), abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.floats(-6, 6, allow_nan=False))
def test_the_expected_watched_fraction_is_the_generators_mean(logit):
    draws = np.random.default_rng(0).beta(2, 2, 400_000)
    sampled = np.clip(draws * watched_fraction_scale(logit), WATCH_MIN, 1.0).mean()
    assert expected_watched_fraction(logit) == pytest.approx(sampled, abs=2e-3)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("world"))
    generate(out, users=400, items=150, days=8, seed=11)
    return Oracle.load(out), read_raw_table(out, "impressions")


def test_the_logged_clicks_and_watches_follow_the_oracle(world):
    oracle, impressions = world
    truth = oracle.engagement(impressions[USER_ID], impressions[ITEM_ID], impressions[EVENT_TS])
    bins = pd.qcut(truth.click_probability, 8, labels=False)
    for b in range(8):
        mine = bins == b
        expected = truth.click_probability[mine].mean()
        observed = impressions[CLICKED].to_numpy()[mine].mean()
        margin = 4 * np.sqrt(expected * (1 - expected) / mine.sum())
        assert abs(observed - expected) < margin, (b, observed, expected)
    for observed, expected in (
        (impressions[CLICKED], truth.click_probability),
        (impressions[WATCH_SECONDS], truth.expected_watch_seconds),
    ):
        error = observed.to_numpy() - expected
        assert abs(error.mean()) < 4 * error.std() / np.sqrt(len(error))


def test_each_impression_carries_the_logging_policys_probability_of_showing_it(world):
    oracle, impressions = world
    probabilities = oracle.world.logging_probabilities()
    users = pd.Index(oracle.world.user_ids).get_indexer(impressions[USER_ID])
    items = pd.Index(oracle.world.item_ids).get_indexer(impressions[ITEM_ID])
    np.testing.assert_allclose(impressions[PROPENSITY], probabilities[users, items], rtol=1e-6)
    # ... and that policy is what drew them: shown counts match the probabilities.
    user = np.bincount(users).argmax()
    shown = np.bincount(items[users == user], minlength=probabilities.shape[1])
    expected = probabilities[user] * shown.sum()
    top = np.argsort(-expected)[:5]
    assert np.all(np.abs(shown[top] - expected[top]) < 4 * np.sqrt(expected[top]) + 1)


def test_off_policy_estimates_on_generated_logs_cover_the_oracle(world):
    oracle, impressions = world
    affinity = oracle.world.affinity_matrix()
    top = np.argsort(-affinity, axis=1)[:, :10]
    rows = np.repeat(np.arange(len(oracle.world.user_ids)), 10)
    pages = pd.DataFrame(
        {
            USER_ID: oracle.world.user_ids[rows],
            ITEM_ID: oracle.world.item_ids[top.ravel()],
            CLICK_PROBABILITY: 0.5,
            EXPECTED_WATCH_SECONDS: 100.0,
        }
    )
    truth = true_value(pages, impressions, oracle, VALUED_IN)
    estimates = estimate(pages, impressions, VALUED_IN)
    for reward in ("clicks", "watch_seconds", "value"):
        for name in ("ips", "snips", "dr"):
            low, high = estimates[reward][name].interval
            assert low <= truth[reward] <= high, (reward, name, estimates[reward][name], truth)


class HashOracle:
    """A stand-in for ``Oracle.engagement`` whose truth is a known function of
    (user, item, time): what true_value does with it is then checkable by hand."""

    def engagement(self, user_ids, item_ids, event_ts):
        users = np.array([int(u[1:]) for u in user_ids], dtype=float)
        items = np.array([int(i[1:]) for i in item_ids], dtype=float)
        ts = np.asarray(event_ts, dtype=float)
        return SimpleNamespace(
            click_probability=(users * 7 + items * 3 + ts) % 10 / 10,
            expected_watch_seconds=items + ts % 5,
        )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 9), max_size=4), min_size=1, max_size=5),  # pages
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 3)), min_size=1, max_size=12),
    st.integers(1, 5),
)
def test_true_value_in_chunks_is_the_mean_of_each_requests_page(
    page_items, logged_rows, chunk_rows
):
    """Each request's page (its user's rows; none for a user without a page) scored
    at the request's time, summed and averaged over requests: written out per request
    here, against true_value scoring a few rows at a time."""
    pages = pd.DataFrame(
        [(f"u{u}", f"i{i}") for u, items in enumerate(page_items) for i in items],
        columns=[USER_ID, ITEM_ID],
    )
    logged = pd.DataFrame(
        [(f"u{u}", f"i{u}", ts) for u, ts in logged_rows], columns=[USER_ID, ITEM_ID, EVENT_TS]
    )
    oracle = HashOracle()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(offpolicy, "TRUTH_CHUNK_ROWS", chunk_rows)
        got = true_value(pages, logged, oracle, VALUED_IN)
    requests = logged.drop_duplicates([USER_ID, EVENT_TS])
    for reward in VALUED_IN:
        per_request = []
        for user, ts in requests[[USER_ID, EVENT_TS]].itertuples(index=False):
            items = pages.loc[pages[USER_ID] == user, ITEM_ID].to_numpy()
            truth = oracle.engagement([user] * len(items), items, [ts] * len(items))
            per_request.append(reward.true(truth).sum())
        assert got[reward.name] == pytest.approx(np.mean(per_request))


def test_exploration_shows_each_item_as_often_as_its_propensity_says():
    rng = np.random.default_rng(5)
    scores = np.sort(rng.normal(size=12))[::-1]
    eligible = np.arange(12)
    page = np.array([0, 1, 2, 3])
    config = ExplorationConfig(share=0.3, temperature=0.5)
    draws = 40_000
    last = np.empty(draws, dtype=int)
    propensity = {}
    for d in range(draws):
        shown, p = explore(page, eligible, scores, config, rng)
        assert shown[:3].tolist() == [0, 1, 2] and p[:3].tolist() == [1.0, 1.0, 1.0]
        last[d] = shown[-1]
        propensity[shown[-1]] = p[-1]
    frequency = np.bincount(last, minlength=12) / draws
    for item, p in propensity.items():
        assert abs(frequency[item] - p) < 4 * np.sqrt(p * (1 - p) / draws) + 1e-4, item
    assert sum(propensity.values()) == pytest.approx(1.0)
    # Without exploration the page is the ranked page, each item certain.
    shown, p = explore(page, eligible, scores, ExplorationConfig(), rng)
    assert shown.tolist() == page.tolist() and p.tolist() == [1.0] * 4


def test_estimates_from_an_exploring_funnels_pages_cover_the_truth():
    """Logs of pages (every row of a request shares its user and second), shown by the
    exploring policy: another page policy's value is recovered from them."""
    bandit = Bandit(seed=6, users=60, items=25, k=5)
    config = ExplorationConfig(share=0.5, temperature=0.3)
    scores = bandit.logging  # the logging policy's own scores
    rows = []
    for request in range(150):
        for u in range(len(bandit.users)):
            order = np.argsort(-scores[u])
            shown, propensity = explore(order[:5], order, scores[u][order], config, bandit.rng)
            clicked = bandit.rng.random(len(shown)) < bandit.click[u, shown]
            rows.append(
                pd.DataFrame(
                    {
                        USER_ID: bandit.users[u],
                        ITEM_ID: bandit.items[shown],
                        EVENT_TS: request,
                        CLICKED: clicked.astype(int),
                        WATCH_SECONDS: np.where(clicked, 60.0, 0.0),
                        PROPENSITY: propensity,
                    }
                )
            )
    logged = pd.concat(rows, ignore_index=True)
    # A target that keeps the logged page's first four items and changes the fifth:
    # the item the logging policy ranks sixth, shown only when explored.
    order = np.argsort(-scores, axis=1)
    target = np.concatenate([order[:, :4], order[:, 5:6]], axis=1)
    pages = pd.DataFrame(
        {
            USER_ID: np.repeat(bandit.users, 5),
            ITEM_ID: bandit.items[target.ravel()],
            CLICK_PROBABILITY: 0.2,
            EXPECTED_WATCH_SECONDS: 60.0,
        }
    )
    truth = bandit.truth(pages)
    clicks = estimate(pages, logged, VALUED_IN)["clicks"]
    for name in ("ips", "snips", "dr"):
        low, high = clicks[name].interval
        assert low <= truth <= high, (name, clicks[name], truth)
