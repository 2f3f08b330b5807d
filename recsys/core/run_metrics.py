"""Metrics of a stage onto its KFP ``Metrics`` artifact.

KFP stores an artifact's metadata as a protobuf Struct, which cannot hold NaN or
infinity: one such value makes the run fail after the stage finished (KFP's local
runner raises while collecting the task's outputs). A metric that is not a finite
number (an interval on too few users, a ratio of nothing) is kept as its text
("nan", "inf") in the metadata instead, so it is still seen, and the run goes on.
"""

import math


def log_metrics(artifact, metrics: dict) -> None:
    """``artifact.log_metric`` for every finite number of ``metrics``; non-finite
    numbers as text in its metadata; other values (text, lists) are not metrics and
    are left out."""
    for name, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            artifact.log_metric(name, value)
        else:
            artifact.metadata[name] = str(float(value))
