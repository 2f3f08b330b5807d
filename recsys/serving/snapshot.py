"""What serving looks up beside the models, pushed with them as
``feature_snapshot/<version>/`` in the serving root: each user's and item's
features as of the push, the item-tower embeddings (for MMR), the candidate
sources besides the two-tower (``recsys.serving.candidates``), the re-ranking
rules, and the curated schemas and feature registry the models were trained
with. A stand-in for an online feature store."""

import json

import numpy as np
import pandas as pd

from recsys.core import contracts, storage
from recsys.core.features import FeatureRegistry, load_registry
from recsys.core.tables import read_dataset
from recsys.serving.candidates import load_candidate_sources
from recsys.serving.rerank import RerankConfig, parse_rerank_config


class FeatureSnapshot:
    """User and item features (and item-tower embeddings) by id, as numpy columns."""

    def __init__(
        self,
        users: pd.DataFrame | None,
        items: pd.DataFrame,
        item_embeddings: pd.DataFrame | None = None,
        registry: FeatureRegistry | None = None,
        candidate_sources_dir: str = "",
    ):
        """``users`` may be None when queries bring their own user features
        (offline evaluation). ``candidate_sources_dir``: what train_retrieval wrote
        besides the two-tower (none: the two-tower's candidates alone)."""
        self.registry = registry or load_registry()
        users = users if users is not None else pd.DataFrame({contracts.USER_ID: []})
        self.user_index = pd.Index(users[contracts.USER_ID].astype(str))
        self.users = {name: users[name].to_numpy() for name in users.columns}
        self.item_index = pd.Index(items[contracts.ITEM_ID].astype(str))
        self.items = {name: items[name].to_numpy() for name in items.columns}
        self.embeddings = None
        if item_embeddings is not None:
            rows = pd.Index(item_embeddings[contracts.ITEM_ID].astype(str)).get_indexer(
                self.item_index
            )
            matrix = np.stack(item_embeddings["embedding"].to_numpy())
            # Items without an embedding get zeros: similar to nothing under MMR.
            self.embeddings = np.where((rows >= 0)[:, None], matrix[np.maximum(rows, 0)], 0.0)
        self.sources = (
            load_candidate_sources(candidate_sources_dir, self.item_index)
            if candidate_sources_dir
            else None
        )

    @classmethod
    def load(cls, directory: str) -> "FeatureSnapshot":
        """A pushed snapshot: users, items, item embeddings and candidate sources (each
        if pushed) and the registry."""
        embeddings = storage.join(directory, contracts.SNAPSHOT_EMBEDDINGS)
        return cls(
            read_dataset(storage.join(directory, contracts.SNAPSHOT_USERS)),
            read_dataset(storage.join(directory, contracts.SNAPSHOT_ITEMS)),
            read_dataset(embeddings) if storage.isdir(embeddings) else None,
            pushed_registry(directory),
            storage.join(directory, contracts.SNAPSHOT_CANDIDATE_SOURCES),
        )

    def user(self, user_id: str) -> tuple[dict[str, np.ndarray], bool]:
        """One user's feature columns (length 1) and whether the user is known. An
        unknown user gets the registry's cold-start row (defaults, missing flags set,
        an empty history): what the model saw in training for users without features."""
        try:
            row = self.user_index.get_loc(user_id)
        except KeyError:
            return self.registry.missing_row("user", user_id), False
        return {name: values[row : row + 1] for name, values in self.users.items()}, True

    def keep_users(self, n: int) -> None:
        """Forget all but the first ``n`` users (an online store holds them)."""
        self.user_index = self.user_index[:n]
        self.users = {name: values[:n] for name, values in self.users.items()}

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each id in the snapshot, -1 where unknown."""
        return self.item_index.get_indexer(item_ids)

    def item_attribute(self, role: str, rows: np.ndarray, absent) -> np.ndarray:
        """The items' values of the feature playing ``role`` (category, creator,
        item_age); ``absent`` for every row when no feature plays it."""
        name = self.registry.role(role)
        return self.items[name][rows] if name in self.items else np.full(len(rows), absent)


def pushed_rerank_config(snapshot_dir: str) -> RerankConfig:
    """The re-ranking rules pushed with a version (defaults for older pushes)."""
    path = storage.join(snapshot_dir, contracts.RERANK_FILE)
    if not storage.exists(path):
        return RerankConfig()
    return parse_rerank_config(json.loads(storage.read_text(path)))


def pushed_registry(snapshot_dir: str) -> FeatureRegistry:
    """The feature registry a version was trained with, pushed with its schemas (the
    packaged one for older pushes)."""
    schemas = storage.join(snapshot_dir, contracts.SNAPSHOT_SCHEMAS)
    return load_registry(schemas if storage.isdir(schemas) else "")
