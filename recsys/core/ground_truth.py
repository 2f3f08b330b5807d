"""The synthetic world's ground truth: how a user truly responds to an item.

``recsys generate`` draws its users and items from latent vectors and samples every
click and watch from the probabilities below; it writes the world beside the data
(``contracts.GROUND_TRUTH_DIR``) so that anything can later ask what a page was
really worth: the evaluation's funnel variants, off-policy estimates checked
against the truth, simulated A/B tests. Real data has no such directory, and
nothing here is used when it is absent.

One definition serves both sides: the generator samples from ``click_probability``
and ``expected_watch_seconds``, the oracle returns them. Real logs come from a
logging policy too; the generator's is ``logging_probabilities`` (a softmax over
the catalog), written with each impression as its ``propensity``.
"""

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from recsys.core import storage
from recsys.core.contracts import GROUND_TRUTH_DIR, ITEM_DURATION, ITEM_ID, USER_ID
from recsys.core.derived import context_columns

# P(click) = sigmoid(CLICK_AFFINITY * affinity + quality + evening boost + CLICK_BIAS).
CLICK_AFFINITY, CLICK_BIAS = 2.5, -3.0
EVENING_FROM_HOUR, EVENING_BOOST = 18, 0.3
# A click watches Beta(2, 2) * (WATCH_BASE + WATCH_SLOPE * clip(logit, -2, 2)) of the
# item, at least WATCH_MIN of it.
WATCH_BASE, WATCH_SLOPE, WATCH_MIN = 0.6, 0.2, 0.02
# The logging policy's exposure logits: EXPOSURE_AFFINITY * affinity + log(popularity).
EXPOSURE_AFFINITY = 1.5
# When users come: relative request rate by hour of day (UTC), evenings busiest.
HOUR_WEIGHTS = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.4, 0.7, 1.0, 1.2, 1.2, 1.2, 1.3]
    + [1.5, 1.4, 1.3, 1.3, 1.5, 1.8, 2.2, 2.6, 2.8, 2.5, 2.0, 1.4]
)

WORLD_FILE = "world.json"
# Users x items matrices (affinity, exposure probabilities) are computed for blocks of
# users of at most this many pairs (32 MB of float64), whatever the world's size.
MATRIX_PAIRS = 4_000_000


def user_blocks(n_users: int, n_items: int) -> list[slice]:
    """Consecutive user rows, each block at most MATRIX_PAIRS users x items."""
    size = max(1, MATRIX_PAIRS // max(n_items, 1))
    return [slice(start, min(start + size, n_users)) for start in range(0, n_users, size)]


def click_logit(affinity, quality, hour_of_day) -> np.ndarray:
    evening = np.where(np.asarray(hour_of_day) >= EVENING_FROM_HOUR, EVENING_BOOST, 0.0)
    return CLICK_AFFINITY * np.asarray(affinity) + np.asarray(quality) + evening + CLICK_BIAS


def watched_fraction_scale(logit) -> np.ndarray:
    return WATCH_BASE + WATCH_SLOPE * np.clip(logit, -2.0, 2.0)


def expected_watched_fraction(logit) -> np.ndarray:
    """E[max(WATCH_MIN, B * s)] for B ~ Beta(2, 2) and s = ``watched_fraction_scale``,
    in closed form: with a = WATCH_MIN / s, F(a) = 3a^2 - 2a^3 and
    E[B; B >= a] = 1/2 - 2a^3 + 3a^4 / 2."""
    scale = watched_fraction_scale(logit)
    a = np.clip(WATCH_MIN / scale, 0.0, 1.0)
    below = 3 * a**2 - 2 * a**3
    return WATCH_MIN * below + scale * (0.5 - 2 * a**3 + 1.5 * a**4)


def sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def respond(rng: np.random.Generator, logit, duration_s) -> tuple[np.ndarray, np.ndarray]:
    """A user's response to each shown item: (clicked 0/1, watch seconds), drawn with
    the click logit's probability and a Beta(2, 2)-shaped share of the item watched."""
    logit = np.asarray(logit, dtype=np.float64)
    clicked = (rng.random(len(logit)) < sigmoid(logit)).astype(np.int64)
    fraction = np.clip(rng.beta(2, 2, len(logit)) * watched_fraction_scale(logit), WATCH_MIN, 1.0)
    watch = np.where(clicked == 1, (np.asarray(duration_s) * fraction).round(1), 0.0)
    return clicked, watch


@dataclass
class World:
    """Latent vectors and item properties the generator drew, and the constants that
    turn a user-item dot product into the standardized affinity."""

    user_ids: np.ndarray
    user_vectors: np.ndarray
    item_ids: np.ndarray
    item_vectors: np.ndarray
    quality: np.ndarray
    popularity: np.ndarray
    duration_s: np.ndarray
    activity: np.ndarray  # each user's request rate relative to the mean user
    affinity_mean: float
    affinity_std: float

    @classmethod
    def of(
        cls,
        user_ids,
        user_vectors,
        activity,
        item_ids,
        item_vectors,
        quality,
        popularity,
        duration_s,
    ):
        """A world whose affinity is standardized over every user-item pair (the
        pairs' mean and standard deviation, accumulated over blocks of users)."""
        blocks = user_blocks(len(user_vectors), len(item_vectors))
        sizes, means, variances = [], [], []
        for block in blocks:
            raw = user_vectors[block] @ item_vectors.T / np.sqrt(user_vectors.shape[1])
            sizes.append(raw.size)
            means.append(raw.mean())
            variances.append(raw.var())
        if len(blocks) == 1:
            mean, std = means[0], np.sqrt(variances[0])
        else:  # the blocks' moments combined (Chan et al.'s parallel variance)
            sizes, means, variances = map(np.asarray, (sizes, means, variances))
            mean = (sizes * means).sum() / sizes.sum()
            std = np.sqrt((sizes * (variances + (means - mean) ** 2)).sum() / sizes.sum())
        return cls(
            np.asarray(user_ids, dtype=object),
            user_vectors,
            np.asarray(item_ids, dtype=object),
            item_vectors,
            np.asarray(quality, dtype=np.float64),
            np.asarray(popularity, dtype=np.float64),
            np.asarray(duration_s, dtype=np.float64),
            np.asarray(activity, dtype=np.float64),
            float(mean),
            float(std),
        )

    def affinity_matrix(self, users: slice = slice(None)) -> np.ndarray:
        """(users x items) standardized affinity, of every user or a block of them."""
        vectors = self.user_vectors[users]
        raw = vectors @ self.item_vectors.T / np.sqrt(vectors.shape[1])
        return (raw - self.affinity_mean) / self.affinity_std

    def affinity(self, user_rows: np.ndarray, item_rows: np.ndarray) -> np.ndarray:
        """Standardized affinity of each (user row, item row) pair."""
        raw = np.einsum("ij,ij->i", self.user_vectors[user_rows], self.item_vectors[item_rows])
        raw = raw / np.sqrt(self.user_vectors.shape[1])
        return (raw - self.affinity_mean) / self.affinity_std

    def logging_probabilities(
        self, extra_logits: np.ndarray | float = 0.0, affinity: np.ndarray | None = None
    ) -> np.ndarray:
        """users x items: the logging policy's probability of showing each item in one
        impression (softmax of the exposure logits plus ``extra_logits``), for every
        user, or for the users whose ``affinity_matrix`` rows are given."""
        affinity = self.affinity_matrix() if affinity is None else affinity
        # In place, one buffer: the matrix is the generator's largest (users x items).
        exposure = EXPOSURE_AFFINITY * affinity
        exposure += np.log(self.popularity)[None, :]
        exposure += extra_logits
        exposure -= exposure.max(axis=1, keepdims=True)
        np.exp(exposure, out=exposure)
        exposure /= exposure.sum(axis=1, keepdims=True)
        return exposure

    def save(self, data_root: str) -> None:
        directory = storage.join(data_root, GROUND_TRUTH_DIR)
        storage.write_parquet(
            pa.table(
                {
                    USER_ID: self.user_ids.astype(str),
                    "vector": list(self.user_vectors),
                    "activity": self.activity,
                }
            ),
            storage.join(directory, "users.parquet"),
        )
        storage.write_parquet(
            pa.table(
                {
                    ITEM_ID: self.item_ids.astype(str),
                    "vector": list(self.item_vectors),
                    "quality": self.quality,
                    "popularity": self.popularity,
                    ITEM_DURATION: self.duration_s,
                }
            ),
            storage.join(directory, "items.parquet"),
        )
        storage.write_text(
            storage.join(directory, WORLD_FILE),
            json.dumps({"affinity_mean": self.affinity_mean, "affinity_std": self.affinity_std}),
        )

    @classmethod
    def load(cls, data_root: str) -> "World":
        directory = storage.join(data_root, GROUND_TRUTH_DIR)
        users = storage.read_parquet(storage.join(directory, "users.parquet")).to_pandas()
        items = storage.read_parquet(storage.join(directory, "items.parquet")).to_pandas()
        constants = json.loads(storage.read_text(storage.join(directory, WORLD_FILE)))
        return cls(
            users[USER_ID].to_numpy(object),
            np.stack(users["vector"].to_numpy()),
            items[ITEM_ID].to_numpy(object),
            np.stack(items["vector"].to_numpy()),
            items["quality"].to_numpy(np.float64),
            items["popularity"].to_numpy(np.float64),
            items[ITEM_DURATION].to_numpy(np.float64),
            users["activity"].to_numpy(np.float64),
            constants["affinity_mean"],
            constants["affinity_std"],
        )


def has_ground_truth(data_root: str) -> bool:
    return bool(data_root) and storage.isfile(storage.join(data_root, GROUND_TRUTH_DIR, WORLD_FILE))


@dataclass
class Engagement:
    """What a user truly does with an item shown at a time, in expectation."""

    click_probability: np.ndarray
    expected_watch_seconds: np.ndarray
    logit: np.ndarray  # of the click (respond draws from it); NaN where unknown
    duration_s: np.ndarray


class Oracle:
    """Scores any (user, item, time) with the world's true engagement probabilities."""

    def __init__(self, world: World):
        self.world = world
        self._users = pd.Index(world.user_ids)
        self._items = pd.Index(world.item_ids)

    @classmethod
    def load(cls, data_root: str) -> "Oracle":
        return cls(World.load(data_root))

    def engagement(self, user_ids, item_ids, event_ts) -> Engagement:
        """Per row: P(click) and E[watch seconds] (0 for a user or item the world does
        not have: nothing is watched that does not exist)."""
        users = self._users.get_indexer(np.asarray(user_ids, dtype=object))
        items = self._items.get_indexer(np.asarray(item_ids, dtype=object))
        known = (users >= 0) & (items >= 0)
        hour = context_columns(np.broadcast_to(np.asarray(event_ts), users.shape))["hour_of_day"]
        logit = click_logit(
            self.world.affinity(users[known], items[known]),
            self.world.quality[items[known]],
            hour[known],
        )
        probability, watch, duration = np.zeros((3, len(users)))
        logits = np.full(len(users), np.nan)
        logits[known] = logit
        duration[known] = self.world.duration_s[items[known]]
        probability[known] = sigmoid(logit)
        watch[known] = probability[known] * duration[known] * expected_watched_fraction(logit)
        return Engagement(probability, watch, logits, duration)
