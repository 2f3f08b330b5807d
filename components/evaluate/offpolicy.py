"""What a page policy would have earned on the logged traffic: off-policy estimates,
and the truth where the data is synthetic.

A logged request is what one user was shown at one second (rows with the same
user and ``event_ts``): one item drawn by the generator's logging policy, or a
page from the funnel. Each shown item carries its ``propensity`` rho(i | u), the
logging policy's probability of showing it in that request. A target policy
shows user u a page P_u, and its value per request is the expected reward of the
page, sum over i in P_u of q(u, i), in clicks, watch seconds or value: rewards add
up over the page's items (no position or page effects). With w = 1[i in P_u] /
rho(i | u) for each logged (u, i, reward r), summed over a request's rows:

- IPS: mean over requests of sum w * r; unbiased, since E[sum w r] = sum_{i in P_u}
  q(u, i) whenever rho > 0 on P_u;
- SNIPS: sum(w r) / sum(w / |P_u|), self-normalized by the weights' known mean
  (E[sum w] = |P_u|); a little bias for much less variance;
- DR (doubly robust): mean of DM_u + sum w * (r - q_hat(u, i)), DM_u = sum over P_u of
  the ranker's predicted reward q_hat; unbiased whatever q_hat is, and lower
  variance the better q_hat is;
- DM (direct method): mean of DM_u; no weights, as biased as q_hat.

Items the logging policy could not show (rho = 0: for the funnel's logs, items
outside the retrieved candidates or filtered out) leave a page's value
unidentified; IPS then counts them as worth nothing.

Rewards (``rewards``): clicks, watch seconds, and the value the ranker's score
stands for, clicks + w * watched minutes.

These are Open Bandit Pipeline's estimators (Saito et al., 2021: IPW, SNIPW, DR,
DM) for the item-level reward of a page, written here with numpy: OBP installs
only as 0.4.1 with this stack, requires torch, and has no estimator for a
deterministic page scored item by item. Intervals are normal 95% intervals with
the requests of one user as one cluster (their rewards are correlated), by the
delta method for the ratio estimators.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.components.evaluate.metrics import Z_95
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


@dataclass(frozen=True)
class Reward:
    """A reward a page is valued in: its realized value per logged impression, a page
    item's prediction from the ranker's outputs, and its truth from the oracle."""

    name: str
    logged: Callable[[pd.DataFrame], np.ndarray]
    predicted: Callable[[pd.DataFrame], np.ndarray]
    true: Callable[[object], np.ndarray]  # of a ground_truth.Engagement


def rewards(watch_weight: float) -> list[Reward]:
    """Clicks, watch seconds and the value the ranker's score estimates:
    clicks + ``watch_weight`` * watched minutes (train_ranking's score_watch_weight;
    its score is P(click) * (1 + weight * minutes of a click), the expectation of it)."""

    def predicted_watch(page):
        # The ranker's watch head predicts the watch of a click.
        return page[CLICK_PROBABILITY].to_numpy(float) * page[EXPECTED_WATCH_SECONDS].to_numpy(
            float
        )

    return [
        Reward(
            "clicks",
            lambda logged: logged[CLICKED].to_numpy(float),
            lambda page: page[CLICK_PROBABILITY].to_numpy(float),
            lambda truth: truth.click_probability,
        ),
        Reward(
            "watch_seconds",
            lambda logged: logged[WATCH_SECONDS].to_numpy(float),
            predicted_watch,
            lambda truth: truth.expected_watch_seconds,
        ),
        Reward(
            "value",
            lambda logged: (
                logged[CLICKED].to_numpy(float)
                + watch_weight * logged[WATCH_SECONDS].to_numpy(float) / 60.0
            ),
            lambda page: (
                page[CLICK_PROBABILITY].to_numpy(float)
                + watch_weight * predicted_watch(page) / 60.0
            ),
            lambda truth: (
                truth.click_probability + watch_weight * truth.expected_watch_seconds / 60.0
            ),
        ),
    ]


ESTIMATORS = ("ips", "snips", "dr", "dm")


@dataclass
class Estimate:
    value: float
    margin: float  # half-width of the 95% interval

    @property
    def interval(self) -> tuple[float, float]:
        return self.value - self.margin, self.value + self.margin


def clustered_ratio(numerators, denominators, clusters) -> Estimate:
    """sum(numerators) / sum(denominators), with the 95% half-width by the delta
    method over clusters (rows of one cluster are not independent). For a plain
    mean, denominators are ones."""
    codes = pd.factorize(np.asarray(clusters))[0]
    a = np.bincount(codes, weights=np.asarray(numerators, dtype=float))
    b = np.bincount(codes, weights=np.asarray(denominators, dtype=float))
    total = b.sum()
    if total <= 0:
        return Estimate(float("nan"), float("nan"))
    ratio = a.sum() / total
    n = len(a)
    if n < 2:
        return Estimate(float(ratio), float("nan"))
    residual = a - ratio * b
    variance = n / (n - 1) * (residual**2).sum() / total**2
    return Estimate(float(ratio), float(Z_95 * np.sqrt(variance)))


def first_of_request(logged: pd.DataFrame) -> np.ndarray:
    """True on the first row of each request (rows of one user at one second)."""
    return ~logged.duplicated([USER_ID, EVENT_TS]).to_numpy()


def pages_of(row_users: pd.Series, pages: pd.DataFrame):
    """The users of some rows (logged requests) as codes, factorized once, and their
    pages by code: (each row's user code, each page row's user code (-1: a user
    with no such row), page length per code; 0: no page)."""
    codes, users = pd.factorize(row_users)
    page_user = pd.Index(users).get_indexer(pages[USER_ID])
    return codes, page_user, np.bincount(page_user[page_user >= 0], minlength=len(users))


def estimate(
    pages: pd.DataFrame, logged: pd.DataFrame, valued_in: list[Reward]
) -> dict[str, dict[str, Estimate]]:
    """Off-policy estimates of a page policy's value per request: reward -> estimator
    -> estimate. ``pages``: one row per (user, item) shown, with the ranker's
    outputs; ``logged``: the logged requests (user, item, event_ts, the rewards,
    propensity). A request whose user has no page (every candidate was already
    watched, say) is a request the policy earns nothing on: 0 in every estimator's
    numerator, and counted in SNIPS's normalizer as one per logged row, which is
    that normalizer's expectation for a page that exists."""
    # Users as codes, factorized once: the clusters of every interval, and the key
    # every per-user sum of the pages is gathered by.
    users, page_user, page_length = pages_of(logged[USER_ID], pages)
    of_logged = page_user >= 0
    length = page_length[users].astype(float)
    no_page = length == 0
    # Each logged row with its item's page row, if the page shows it (one merge for
    # the weights and every reward's prediction).
    shown = logged[[USER_ID, ITEM_ID]].merge(
        pages.assign(in_page=True), on=[USER_ID, ITEM_ID], how="left"
    )
    in_page = shown["in_page"].fillna(False).to_numpy(bool)
    weight = in_page / logged[PROPENSITY].to_numpy(float)
    first = first_of_request(logged).astype(float)
    snips_normalizer = np.where(no_page, 1.0, weight / np.maximum(length, 1.0))
    result = {}
    for reward in valued_in:
        r = reward.logged(logged)
        page_total = np.bincount(
            page_user[of_logged], reward.predicted(pages)[of_logged], len(page_length)
        )
        direct = page_total[users]
        q_logged = np.where(in_page, reward.predicted(shown), 0.0)
        result[reward.name] = {
            "ips": clustered_ratio(weight * r, first, users),
            "snips": clustered_ratio(weight * r, snips_normalizer, users),
            "dr": clustered_ratio(first * direct + weight * (r - q_logged), first, users),
            "dm": clustered_ratio(first * direct, first, users),
        }
    return result


# Rows (request x page item) the oracle scores at once in ``true_value``.
TRUTH_CHUNK_ROWS = 500_000


def true_value(
    pages: pd.DataFrame, logged: pd.DataFrame, oracle, valued_in: list[Reward]
) -> dict[str, float]:
    """The page policy's true value per logged request (reward -> value): each
    request's page scored by ``oracle`` (``recsys.core.ground_truth.Oracle``) at
    the request's time, averaged over the requests. Requests x page items grow with
    the log (x100: 24 million), so they are scored TRUTH_CHUNK_ROWS at a time."""
    requests = logged.loc[first_of_request(logged), [USER_ID, EVENT_TS]]
    users, page_user, page_length = pages_of(requests[USER_ID], pages)
    # Each user's page as a run of rows: a request expands to its user's run (a
    # request whose user has no page, to a run of length 0: worth nothing).
    by_user = np.argsort(page_user, kind="stable")
    by_user = by_user[page_user[by_user] >= 0]
    page_items = pages[ITEM_ID].to_numpy(dtype=object)[by_user]
    length = page_length[users]
    start = (np.cumsum(page_length) - page_length)[users]
    request_users = requests[USER_ID].to_numpy(dtype=object)
    request_times = requests[EVENT_TS].to_numpy()
    totals = np.zeros((len(valued_in), len(requests)))
    per_chunk = max(1, TRUTH_CHUNK_ROWS // max(int(page_length.max(initial=1)), 1))
    for first in range(0, len(requests), per_chunk):
        chunk = slice(first, first + per_chunk)
        request = np.repeat(np.arange(first, min(first + per_chunk, len(requests))), length[chunk])
        # Offset of each row within its request's page: 0..length-1 per request.
        offset = np.arange(len(request)) - np.repeat(
            np.cumsum(length[chunk]) - length[chunk], length[chunk]
        )
        truth = oracle.engagement(
            request_users[request], page_items[start[request] + offset], request_times[request]
        )
        for i, reward in enumerate(valued_in):
            totals[i] += np.bincount(request, reward.true(truth), len(requests))
    return {reward.name: float(totals[i].mean()) for i, reward in enumerate(valued_in)}
