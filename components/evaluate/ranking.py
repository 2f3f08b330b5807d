"""Ranking quality: the exported ranker on every eval impression, against the
constant-CTR prior of the training window."""

from dataclasses import dataclass, field

import numpy as np

from recsys.components.evaluate.data import EvalData
from recsys.components.evaluate.metrics import (
    CalibrationCurve,
    RocCurve,
    auc_margin,
    calibration,
    expected_calibration_error,
    log_loss,
    log_losses,
    mean_margin,
    normalized_entropy,
    ratio_margin,
    roc_auc,
    roc_curve,
)
from recsys.components.evaluate.models import outputs_in_batches, serving_fn
from recsys.core.contracts import CLICK_PROBABILITY, CLICKED, EXPECTED_WATCH_SECONDS, WATCH_SECONDS


@dataclass
class RankingEvaluation:
    eval_examples: int
    auc: float
    logloss: float
    normalized_entropy: float  # log loss over the constant-CTR prior's
    prior_ctr: float  # the training window's click rate
    prior_logloss: float
    mean_predicted_ctr: float
    eval_ctr: float
    calibration_ratio: float  # mean predicted / observed click rate
    expected_calibration_error: float
    # Predicted over observed mean watch time of clicks, and its mean absolute error;
    # None without watch time (MovieLens) or a watch head.
    watch_time_ratio: float | None
    watch_time_mae_seconds: float | None
    # Half-widths of the 95% intervals of the gated metrics (metrics.py, "intervals").
    auc_margin: float
    normalized_entropy_margin: float
    calibration_ratio_margin: float
    calibration: CalibrationCurve = field(repr=False)
    roc: RocCurve = field(repr=False)

    def metrics(self) -> dict[str, float]:
        """Flat, as logged; the watch-time metrics only where they exist."""
        names = [
            "eval_examples",
            "auc",
            "logloss",
            "normalized_entropy",
            "prior_ctr",
            "prior_logloss",
            "mean_predicted_ctr",
            "eval_ctr",
            "calibration_ratio",
            "expected_calibration_error",
            "watch_time_ratio",
            "watch_time_mae_seconds",
            "auc_margin",
            "normalized_entropy_margin",
            "calibration_ratio_margin",
        ]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def evaluate_ranking(ranking_model_dir: str, prior: float, data: EvalData) -> RankingEvaluation:
    """The ranker on every eval impression (streamed) against ``prior``, the training
    window's click-through rate."""
    impressions = data.impressions
    labels = impressions[CLICKED].to_numpy()
    fn = serving_fn(ranking_model_dir)
    names = [CLICK_PROBABILITY, EXPECTED_WATCH_SECONDS]

    def scored(frame):
        outputs = outputs_in_batches(fn, frame)
        return np.stack([outputs[name] for name in names], axis=1)

    stacked = data.per_batch(scored)
    outputs = {name: stacked[:, i] for i, name in enumerate(names)}
    probabilities = outputs[CLICK_PROBABILITY]
    curve = calibration(labels, probabilities)
    watch_ratio = watch_error = None
    watched = (labels == 1) & (impressions[WATCH_SECONDS].to_numpy() > 0)
    if watched.any() and outputs[EXPECTED_WATCH_SECONDS][watched].any():
        predicted = outputs[EXPECTED_WATCH_SECONDS][watched]
        observed = impressions[WATCH_SECONDS].to_numpy()[watched]
        watch_ratio = float(predicted.mean() / observed.mean())
        watch_error = float(np.abs(predicted - observed).mean())
    row_losses = log_losses(labels, probabilities)
    prior_logloss = log_loss(labels, np.full(len(labels), prior))
    return RankingEvaluation(
        eval_examples=int(len(labels)),
        auc=roc_auc(labels, probabilities),
        logloss=float(row_losses.mean()),
        normalized_entropy=normalized_entropy(labels, probabilities, prior),
        prior_ctr=prior,
        prior_logloss=prior_logloss,
        mean_predicted_ctr=float(probabilities.mean()),
        eval_ctr=float(labels.mean()),
        calibration_ratio=float(probabilities.mean() / max(labels.mean(), 1e-12)),
        expected_calibration_error=expected_calibration_error(curve),
        watch_time_ratio=watch_ratio,
        watch_time_mae_seconds=watch_error,
        auc_margin=auc_margin(labels, probabilities),
        # The prior's log loss is taken as fixed: the margin is the model's own.
        normalized_entropy_margin=mean_margin(row_losses) / prior_logloss,
        calibration_ratio_margin=ratio_margin(probabilities, labels),
        calibration=curve,
        roc=roc_curve(labels, probabilities),
    )
