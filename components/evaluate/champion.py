"""The candidate against the models serving now (the champion), both scored on
the same eval data, in this step, by the same function (``served_metrics``).

Full-catalog recall needs scores for every item, which the pushed retrieval model
does not expose (it returns its top K), so both are measured as served: each
model's own top-K list with the user's training items removed afterwards
("served Recall@K"), plus ranking AUC, overall and per slice.
"""

import contextlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.components.evaluate import gate
from recsys.components.evaluate.data import EvalData
from recsys.components.evaluate.funnel import FunnelEvaluation
from recsys.components.evaluate.metrics import auc_margin, mean_margin, roc_auc
from recsys.components.evaluate.models import call_in_batches, serving_fn
from recsys.components.evaluate.retrieval import RetrievalTask
from recsys.components.evaluate.slices import Slices
from recsys.core import storage
from recsys.core.contracts import (
    CLICK_PROBABILITY,
    CLICKED,
    COMPARED_WITH_CHAMPION,
    ITEM_ID,
    ITEM_IDS,
    RANKING,
    RETRIEVAL,
    SERVED_WHEN_EVALUATED,
    SNAPSHOT_CANDIDATE_SOURCES,
    SNAPSHOT_DIR,
    SNAPSHOT_EMBEDDINGS,
    USER_ID,
)
from recsys.serving import serving_root as root_
from recsys.serving.snapshot import pushed_rerank_config


@dataclass
class ServedMetrics:
    """Served Recall@k and ranking AUC of one pair of serving models: value, size
    (positives) and the 95% interval's half-width, by metric and slice."""

    values: dict[str, dict[str, float]]
    sizes: dict[str, dict[str, int]]
    margins: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class ChampionComparison:
    """The change checks and what they compared with. ``candidate`` and ``champion``
    are set when both were scored."""

    checks: list[gate.Check]
    version: int | None
    note: str
    versions: dict[str, int] = field(default_factory=dict)
    # What models.config served when this evaluation ran, and whether the blessing
    # depends on it: push refuses when another version was pushed since.
    served_when_evaluated: dict[str, int] = field(default_factory=dict)
    compared: bool = True
    candidate: ServedMetrics | None = None
    champion: ServedMetrics | None = None

    def summary(self) -> dict:
        """For the blessing: what was compared, and both sides' values."""
        summary = {
            "version": self.version,
            "note": self.note,
            SERVED_WHEN_EVALUATED: self.served_when_evaluated,
            COMPARED_WITH_CHAMPION: self.compared,
        }
        if self.candidate is not None:
            summary.update(
                versions=self.versions,
                candidate=self.candidate.values,
                champion=self.champion.values,
                sizes=self.candidate.sizes,
            )
        return summary


def served_top_k(
    retrieval_model_dir: str, users: np.ndarray, queries: pd.DataFrame, masked: pd.DataFrame, k: int
) -> pd.DataFrame:
    """A retrieval serving model's own top-K list per user (user_id, item_id), with
    the user's training items removed afterwards, cut to k: how the model performs
    as deployed. The list cannot be widened, so candidate and champion are treated
    identically."""
    served = call_in_batches(serving_fn(retrieval_model_dir), queries, ITEM_IDS)
    ranked = pd.DataFrame(
        {
            USER_ID: np.repeat(users, served.shape[1]),
            ITEM_ID: served.astype(str).ravel(),
            "rank": np.tile(np.arange(served.shape[1]), len(users)),
        }
    )
    ranked = ranked.merge(masked.assign(_masked=True), on=[USER_ID, ITEM_ID], how="left")
    ranked = ranked[ranked["_masked"].isna()].sort_values([USER_ID, "rank"], kind="stable")
    return ranked.groupby(USER_ID, sort=False).head(k)[[USER_ID, ITEM_ID]]


def served_metrics(
    models: dict[str, str],
    task: RetrievalTask,
    data: EvalData,
    slices: Slices,
    k: int,
    category: str | None,
) -> ServedMetrics:
    """Served Recall@k and ranking AUC, overall and per slice, of one pair of serving
    models. A category slice of retrieval is the recall of the eval positives in that
    category (``category``: the column of the item's category). The same code scores
    the candidate and the champion. Without a category (``None``), no category slices."""
    top = served_top_k(models[RETRIEVAL], task.users, task.queries, task.train_clicks, k)
    hit = task.positives.merge(top.assign(_hit=True), on=[USER_ID, ITEM_ID], how="left")
    hit["_hit"] = hit["_hit"].notna()
    impressions = data.impressions
    labels = impressions[CLICKED].to_numpy()
    probabilities = data.score(serving_fn(models[RANKING]), CLICK_PROBABILITY)
    if category is None:
        positive_rows = slices.masks(hit[USER_ID])
        impression_rows = slices.masks(impressions[USER_ID])
    else:
        category_of = impressions.drop_duplicates(ITEM_ID).set_index(ITEM_ID)[category]
        positive_rows = slices.masks(hit[USER_ID], category_of.reindex(hit[ITEM_ID]))
        impression_rows = slices.masks(impressions[USER_ID], impressions[category])
    recall_name, auc_name = f"served Recall@{k}", "ranking AUC"
    values, sizes, margins = ({recall_name: {}, auc_name: {}} for _ in range(3))
    for name in positive_rows:
        per_user = hit[positive_rows[name]].groupby(USER_ID)["_hit"].mean()
        values[recall_name][name] = float(per_user.mean()) if len(per_user) else float("nan")
        sizes[recall_name][name] = int(len(per_user))
        margins[recall_name][name] = mean_margin(per_user.to_numpy())
        mask = impression_rows[name]
        values[auc_name][name] = roc_auc(labels[mask], probabilities[mask])
        sizes[auc_name][name] = int(labels[mask].sum())
        margins[auc_name][name] = auc_margin(labels[mask], probabilities[mask])
    return ServedMetrics(values, sizes, margins)


def champion_checks(
    serving_root: str,
    candidate: dict[str, str],
    task: RetrievalTask,
    data: EvalData,
    thresholds: gate.Thresholds,
    category: str | None,
) -> ChampionComparison:
    """Change checks of the candidate (model name -> SavedModel dir) against the
    version ``models.config`` serves now, both scored on the same eval data here."""
    served = root_.served_versions(serving_root) if serving_root else {}
    if not thresholds.compare_with_champion:
        return ChampionComparison(
            [],
            served.get(RETRIEVAL),
            "not compared with the serving model: compare_with_champion is false",
            compared=False,
        )
    if not served:
        return ChampionComparison([], None, "no model serving yet: value thresholds only")
    champion = {
        name: storage.join(serving_root, name, str(served[name]))
        for name in candidate
        if name in served
    }
    version = served.get(RETRIEVAL)
    label = ", ".join(f"{name} {served[name]}" for name in sorted(champion))
    if set(champion) != set(candidate):
        note = f"models.config serves {sorted(served)}, not every one of {sorted(candidate)}"
        return ChampionComparison(
            gate.champion_unavailable(note, thresholds), version, note, served_when_evaluated=served
        )
    slices = Slices.of(
        task.users, task.train_clicks, data.impressions, thresholds.slice_top_categories, category
    )
    scored = {}
    try:
        with contextlib.ExitStack() as local:  # a bucket's SavedModels, copied to load
            loadable = {n: local.enter_context(storage.local_copy(p)) for n, p in champion.items()}
            for role, models in (("candidate", candidate), ("champion", loadable)):
                scored[role] = served_metrics(
                    models, task, data, slices, thresholds.recall_k, category
                )
    except (KeyError, ValueError, TypeError, OSError, tf.errors.OpError) as error:
        # e.g. the serving model expects features this run no longer has
        note = (
            f"serving version ({label}) cannot be scored on this run's data "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        )
        return ChampionComparison(
            gate.champion_unavailable(note, thresholds), version, note, served_when_evaluated=served
        )
    checks = gate.change_checks(
        scored["candidate"].values,
        scored["champion"].values,
        scored["candidate"].sizes,
        version if len(set(served[n] for n in champion)) == 1 else label,
        thresholds,
        scored["candidate"].margins,
    )
    return ChampionComparison(
        checks,
        version,
        f"compared with serving version {label} on the same eval data",
        {n: served[n] for n in champion},
        served,
        True,
        scored["candidate"],
        scored["champion"],
    )


def value_check(
    serving_root: str,
    comparison: ChampionComparison,
    candidate: FunnelEvaluation,
    evaluate_champion_funnel,
    thresholds: gate.Thresholds,
) -> tuple[list[gate.Check], FunnelEvaluation | None]:
    """The candidate funnel's off-policy value (DR, per request) against the serving
    version's, on the same logged requests; ``evaluate_champion_funnel(retrieval,
    ranking, item_embeddings, rules, candidate_sources)`` measures the champion as the
    candidate was.
    Off unless ``compare_estimated_value``; fails closed when it cannot be estimated."""
    if not thresholds.compare_estimated_value or not comparison.compared:
        return [], None
    if not comparison.versions:
        return [], None  # nothing serves (or the champion failed closed already)
    metric = "funnel value per request (DR)"

    def failed(note: str) -> tuple[list[gate.Check], None]:
        check = gate.Check("change", metric, "all", None, None, "", "an estimate", False, note)
        return [check], None

    if candidate.variants["funnel"].estimates is None:
        return failed(f"no off-policy estimate: {candidate.off_policy_note}")
    version = comparison.versions[RETRIEVAL]
    snapshot = storage.join(serving_root, SNAPSHOT_DIR, str(version))
    try:
        with contextlib.ExitStack() as local:  # a bucket's SavedModels, copied to load
            models = {
                name: local.enter_context(
                    storage.local_copy(storage.join(serving_root, name, str(served)))
                )
                for name, served in comparison.versions.items()
            }
            champion = evaluate_champion_funnel(
                models[RETRIEVAL],
                models[RANKING],
                storage.join(snapshot, SNAPSHOT_EMBEDDINGS),
                pushed_rerank_config(snapshot),
                storage.join(snapshot, SNAPSHOT_CANDIDATE_SOURCES),
            )
    except (KeyError, ValueError, TypeError, OSError, tf.errors.OpError) as error:
        return failed(
            f"serving version {version}'s funnel cannot be estimated on this run's data "
            f"({type(error).__name__}: {str(error).splitlines()[0][:200]})"
        )
    ours = candidate.variants["funnel"].estimates["value"]["dr"]
    theirs = champion.variants["funnel"].estimates["value"]["dr"]
    name = f"serving version {version}"
    floor = (1 - thresholds.max_regression) * theirs.value
    threshold = f">= {1 - thresholds.max_regression:g} x {name}"
    check = gate.at_least(
        "change", metric, "all", ours.value, floor, theirs.value, name, threshold, ours.margin
    )
    return [check], champion
