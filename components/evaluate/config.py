"""The parameters of evaluate: the release gate's thresholds, declared once.

Each field's name, type, default and meaning: the pipeline's parameters and the
KFP shim's arguments derive from these fields (``recsys.core.config``). No heavy
imports here: the pipeline reads every stage's config to build its signature.
"""

from dataclasses import dataclass

from recsys.core.config import parameter

# Which way each check gets looser than its default: the blessing names every
# setting moved that way (gate.relaxed), so a pass after loosening reads as one.
# recall_k, slice_top_categories and compare_estimated_value change what is
# measured, not how strictly (turning the estimated-value check on adds a check).
LOOSER_WHEN = {
    "min_recall": "lower",
    "min_recall_lift": "lower",
    "min_auc": "lower",
    "max_normalized_entropy": "higher",
    "min_calibration_ratio": "lower",
    "max_calibration_ratio": "higher",
    "max_regression": "higher",
    "max_slice_regression": "higher",
    "min_slice_size": "higher",  # more slices skipped as too small
    "compare_with_champion": "lower",  # false: no comparison with the serving model
}


@dataclass(frozen=True)
class Thresholds:
    recall_k: int = parameter(50, "K of the gate's retrieval Recall@K")
    min_recall: float = parameter(0.0, "the candidate's Recall@K at least this")
    min_recall_lift: float = parameter(
        1.05, "the candidate's Recall@K at least this multiple of popularity's"
    )
    min_auc: float = parameter(0.55, "ranking AUC at least this")
    max_normalized_entropy: float = parameter(
        1.0, "ranking log loss over the constant-CTR prior's at most this"
    )
    min_calibration_ratio: float = parameter(
        0.8, "mean predicted click rate over the observed one at least this..."
    )
    max_calibration_ratio: float = parameter(1.25, "...and at most this")
    max_regression: float = parameter(
        0.02,
        "against the model serving now, on the same data: at most this fraction worse overall...",
    )
    max_slice_regression: float = parameter(
        0.05, "...and per slice (new users, heavy users, top categories; smaller, noisier)"
    )
    min_slice_size: int = parameter(
        30,
        "slices with fewer positives are listed as skipped (users with a held-out click "
        "for retrieval, clicked impressions for ranking)",
    )
    slice_top_categories: int = parameter(
        3, "also slice by this many most frequent item categories of the eval impressions"
    )
    compare_with_champion: bool = parameter(
        True,
        "false: value checks only, no comparison with the model serving now (the blessing says so)",
    )
    compare_estimated_value: bool = parameter(
        False,
        "also require the candidate funnel's off-policy value per request (doubly robust, "
        "from the eval impressions' propensities) to be at most max_regression below the "
        "serving version's, both estimated on the same requests",
    )

    def __post_init__(self):
        if self.min_calibration_ratio > self.max_calibration_ratio:
            raise ValueError(
                f"min_calibration_ratio {self.min_calibration_ratio} is above "
                f"max_calibration_ratio {self.max_calibration_ratio}"
            )
        for name in ("max_regression", "max_slice_regression"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} is a fraction in [0, 1), got {getattr(self, name)}")
        if self.min_slice_size < 1 or self.slice_top_categories < 0 or self.recall_k < 1:
            raise ValueError("min_slice_size and recall_k must be >= 1, slice_top_categories >= 0")
