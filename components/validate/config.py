"""The parameters of validate, declared once.

Each field's name, type, default and meaning: the pipeline's parameters and the
KFP shim's arguments derive from these fields (``recsys.core.config``). No heavy
imports here: the pipeline reads every stage's config to build its signature.
"""

from dataclasses import dataclass

from recsys.core.config import parameter


@dataclass(frozen=True)
class ValidateConfig:
    statistics_root: str = parameter(
        "", "where spans that pass are kept as drift baselines; empty: <state root>/statistics"
    )
    drift_baseline: str = parameter(
        "", "compare with this statistics file instead of the newest earlier span"
    )
    anomaly_policy: str = parameter(
        "{}",
        "JSON: anomaly kind (schema, skew, drift, volume) or TFDV anomaly type -> "
        "block or warn; anything not listed blocks",
    )
