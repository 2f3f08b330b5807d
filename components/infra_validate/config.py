"""The parameters of infra_validate: its budgets, declared once.

Each field's name, type, default and meaning: the pipeline's parameters and the
KFP shim's arguments derive from these fields (``recsys.core.config``). No heavy
imports here: the pipeline reads every stage's config to build its signature.
"""

from dataclasses import dataclass

from recsys.core.config import parameter


@dataclass(frozen=True)
class Budgets:
    max_load_seconds: float = parameter(60.0, "infra validation: each SavedModel loads within this")
    max_request_ms: float = parameter(
        100.0, "infra validation: p99 CPU time of single-example warmup requests"
    )
    warmup_records: int = parameter(
        16, "warmup requests built from eval rows (TF Serving replays at most 1000)", pipeline=False
    )
    repeats: int = parameter(
        10, "replays of each warmup request for the latency figure", pipeline=False
    )

    def __post_init__(self):
        if self.max_load_seconds <= 0 or self.max_request_ms <= 0:
            raise ValueError("infra budgets must be positive")
        if not 1 <= self.warmup_records <= 1000:  # TF Serving replays at most 1000
            raise ValueError(f"warmup_records must be in [1, 1000], got {self.warmup_records}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1, got {self.repeats}")
