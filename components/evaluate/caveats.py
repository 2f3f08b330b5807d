"""Where the evaluation's numbers would mislead, said next to them.

A caveat does not block (the gate does); it goes into the blessing (``caveats``),
the summary ``recsys run`` prints and the HTML report, so nobody reads a blessing
decided on a few dozen users, or a page length cut by a cap on an attribute the
catalog does not have, without being told.
"""

import math

import pandas as pd

from recsys.components.evaluate.retrieval import RetrievalTask
from recsys.core.contracts import UNKNOWN, USER_ID
from recsys.core.features import FeatureRegistry
from recsys.serving.rerank import UNCAPPED, RerankConfig

# Below this many evaluated users a 95% interval on a recall near 0.3 is wider
# than +-0.09: wide enough to bless or refuse on noise.
MIN_EVAL_USERS = 100
# Above this share of evaluated users without a training click, the run measures
# cold start more than the models.
MAX_NEW_USER_SHARE = 0.5
# Above this share of unknown values, a cap on the attribute acts on too little.
MAX_UNKNOWN_SHARE = 0.5


def eval_size(task: RetrievalTask, recall: float | None, margin: float | None, k: int) -> list[str]:
    """Too few eval users; ``margin`` is the half-width of Recall@k's 95% interval
    over those users (``metrics.mean_margin``)."""
    users = len(task.users)
    if users >= MIN_EVAL_USERS:
        return []
    interval = ""
    if recall is not None and margin is not None and math.isfinite(recall + margin):
        interval = f"; Recall@{k} {recall:.3f} is known to +-{margin:.3f} (95%)"
    return [
        f"the gate judged {users} eval users (users with a new click in the eval days), "
        f"fewer than {MIN_EVAL_USERS}{interval}. Lengthen eval_days, or use a longer span "
        "of data, before trusting this blessing"
    ]


def training_history(task: RetrievalTask) -> list[str]:
    users = len(task.users)
    if not users:
        return []
    # pandas hashes; np.isin on object (string) arrays compares every pair.
    new = int((~pd.Index(task.users).isin(task.train_clicks[USER_ID])).sum())
    if new / users <= MAX_NEW_USER_SHARE:
        return []
    return [
        f"{new} of {users} eval users ({new / users:.0%}) have no click in the training "
        "days, so the metrics measure cold start more than the models. Lengthen "
        "lookback_days (the training days are lookback_days - eval_days)"
    ]


def rerank_caps(config: RerankConfig, items: pd.DataFrame, registry: FeatureRegistry) -> list[str]:
    """A cap over an attribute that is mostly unknown (the cap skips unknown
    values, so it does little) or has one known value (every page is cut to it)."""
    found = []
    for option, role in (("max_per_creator", "creator"), ("max_per_category", "category")):
        limit = getattr(config, option)
        column = registry.role(role)
        if limit and column is None:
            found.append(
                f"rerank {option}={limit} is off: no feature has the role {role} (the "
                f"data has no {role} attribute)"
            )
        if not limit or column is None or column not in items or items.empty:
            continue
        values = items[column].astype(str)
        unknown = values.isin(UNCAPPED)
        known = values[~unknown].nunique()
        if unknown.mean() > MAX_UNKNOWN_SHARE:
            found.append(
                f"rerank {option}={limit}: {unknown.mean():.0%} of the catalog's items have no "
                f"{column} ({UNKNOWN} is not capped), so the cap acts on few items; set "
                f"{option} to 0 or bring the {column} column"
            )
        elif known == 1:
            found.append(
                f"rerank {option}={limit}: every item with a {column} has the same one, so "
                f"pages hold at most {limit} of them; set {option} to 0 or bring real values"
            )
    if config.freshness_boost and registry.role("item_age") is None:
        found.append(
            f"rerank freshness_boost={config.freshness_boost} is off: no feature has the "
            "role item_age (the data has no upload time of its items)"
        )
    return found
