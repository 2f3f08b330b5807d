"""Exploration: the logging policy's own randomness, with the probability of every
item it shows.

A share of requests shows, in the page's last slot, an item drawn by softmax
sampling over the final scores (Merlin's serving ensembles sample the whole page
this way; one slot keeps the cost to the page small): p(j) = softmax(score_j /
temperature) over the candidates the re-ranking filters left, but the page's
first k - 1. The other requests show the page as ranked.

Every served item's probability of being on the page is then known exactly and
returned as its ``propensity``: 1 for the first k - 1 items, and for the last
slot's item x, (1 - share) * [x is the ranked page's last item] + share * p(x).
Logged with the impression, it lets the evaluate stage estimate any other page
policy's value off policy (``recsys.components.evaluate.offpolicy``), for pages
whose items this policy can show: the retrieved candidates the filters leave.
The explored slot ignores the creator and category caps; MMR does not apply to it.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ExplorationConfig:
    share: float = 0.0  # share of requests whose last slot explores; 0 = off
    temperature: float = 1.0  # of the softmax over final scores (the score's units)

    def __post_init__(self):
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"exploration share must be in [0, 1], got {self.share}")
        if not self.temperature > 0:
            raise ValueError(f"exploration temperature must be > 0, got {self.temperature}")


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.asarray(scores, dtype=np.float64) / temperature
    weights = np.exp(logits - logits.max(initial=-np.inf))
    return weights / weights.sum()


def explore(
    page: np.ndarray,
    eligible: np.ndarray,
    eligible_scores: np.ndarray,
    config: ExplorationConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """(the page shown, each shown item's propensity). ``page``: the ranked page's
    candidate positions; ``eligible``: every candidate position the filters left,
    with its final score, best first."""
    shown, propensity = np.asarray(page), np.ones(len(page))
    if not len(page) or not config.share:
        return shown, propensity
    pool = ~np.isin(eligible, page[:-1])
    candidates = np.asarray(eligible)[pool]
    probabilities = softmax(np.asarray(eligible_scores)[pool], config.temperature)
    if rng.random() < config.share:
        shown = np.append(page[:-1], candidates[rng.choice(len(candidates), p=probabilities)])
    last = shown[-1]
    propensity[-1] = (1.0 - config.share) * (last == page[-1]) + config.share * probabilities[
        np.flatnonzero(candidates == last)[0]
    ]
    return shown, propensity
