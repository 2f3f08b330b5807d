"""The parameters of the point-in-time join (features/join), declared once.

Each field's name, type, default and meaning: the pipeline's parameters and the
KFP shim's arguments derive from these fields (``recsys.core.config``). No heavy
imports here: the pipeline reads every stage's config to build its signature.
"""

from dataclasses import dataclass

from recsys.core.config import parameter


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
