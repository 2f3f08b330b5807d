"""The parameters of the point-in-time join (features/join), declared once.

Each field's name, type, default and meaning: the pipeline's parameters and the
KFP shim's arguments derive from these fields (``recsys.core.config``). No heavy
imports here: the pipeline reads every stage's config to build its signature.
"""

from dataclasses import dataclass

from recsys.core.config import parameter
from recsys.core.contracts import WATCHED_MAX_ITEMS

WATCHED_FROM = ("clicks", "impressions")


@dataclass(frozen=True)
class JoinConfig:
    feature_views: str = parameter(
        "{}",
        "per feature view (JSON): ttl_days, created_before_event, defaults, join "
        "(auto | broadcast | bucket)",
    )
    history_length: int = parameter(
        10,
        "clicked items in each example's engagement history (at most the schema's value_count max)",
    )
    watched_horizon_days: int = parameter(
        365,
        "days before as_of whose engagements the watched rule keeps out of pages "
        "(the user snapshot's watched items; the history is kept out too)",
    )
    watched_max_items: int = parameter(
        WATCHED_MAX_ITEMS, "most watched items kept per user (the newest; bounds the user snapshot)"
    )
    watched_from: str = parameter(
        "clicks",
        "clicks, or impressions: every logged impression is a consumption (a ratings "
        "log: a rated item was seen, liked or not)",
    )

    def __post_init__(self):
        if self.watched_from not in WATCHED_FROM:
            raise ValueError(
                f"watched_from must be one of {WATCHED_FROM}, got {self.watched_from!r}"
            )
        if self.watched_horizon_days < 0 or self.watched_max_items < 0:
            raise ValueError("watched_horizon_days and watched_max_items must be >= 0")
