"""Online path on the pushed artifacts: retrieval -> ranking -> re-ranking.

This loads the same SavedModels TF Serving would load from the serving root
(TF Serving itself is not installed here) and the feature snapshot pushed with
them, which stands in for an online feature store.
"""

import os
from dataclasses import dataclass

import recsys  # noqa: F401

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.tables import UNKNOWN
from components.push.push import SNAPSHOT_DIR, latest_version
from components.train_ranking.train_ranking import PROBABILITY_OUTPUT
from recsys import modeling


@dataclass
class Recommender:
    retrieve: object
    rank: object
    users: pd.DataFrame
    items: pd.DataFrame
    version: int

    @classmethod
    def load(cls, serving_root: str) -> "Recommender":
        version = latest_version(serving_root, "retrieval")
        load = lambda name: tf.saved_model.load(  # noqa: E731
            os.path.join(serving_root, name, str(version))).signatures["serving_default"]
        snapshot = os.path.join(serving_root, SNAPSHOT_DIR, str(version))
        return cls(load("retrieval"), load("ranking"),
                   pd.read_parquet(os.path.join(snapshot, "users.parquet")).set_index("user_id"),
                   pd.read_parquet(os.path.join(snapshot, "items.parquet")).set_index("item_id"),
                   version)

    def user_row(self, user_id: str, at: pd.Timestamp) -> pd.DataFrame:
        """The user's features from the snapshot plus the request's context."""
        if user_id in self.users.index:
            row = self.users.loc[[user_id]].reset_index()
        else:
            # Cold start: unknown user, default features with the missing flag set.
            defaults = {c: (UNKNOWN if self.users[c].dtype == object else 0)
                        for c in self.users.columns}
            defaults.update(user_features_missing=1, user_history_items=[])
            row = pd.DataFrame([{"user_id": user_id, **defaults}])
        return row.assign(hour_of_day=np.int64(at.hour), day_of_week=np.int64(at.dayofweek))

    def recommend(self, user_id: str, k: int = 10, at: pd.Timestamp | None = None,
                  max_per_creator: int = 2) -> pd.DataFrame:
        at = at or pd.Timestamp.now(tz="UTC")
        user = self.user_row(user_id, at)
        retrieved = self.retrieve(**modeling.raw_tensors(
            user, self.retrieve.structured_input_signature[1]))
        ids = retrieved["item_ids"].numpy()[0].astype(str)
        candidates = pd.DataFrame({"item_id": ids,
                                   "retrieval_score": retrieved["scores"].numpy()[0]})
        candidates = candidates.drop_duplicates("item_id")
        candidates = candidates[candidates["item_id"].isin(self.items.index)]
        features = candidates.join(self.items, on="item_id")
        for column in user.columns:
            features[column] = [user[column].iloc[0]] * len(features)
        scores = self.rank(**modeling.raw_tensors(features, self.rank.structured_input_signature[1]))
        features["click_probability"] = scores[PROBABILITY_OUTPUT].numpy()
        return rerank(features, k, max_per_creator)


def rerank(scored: pd.DataFrame, k: int, max_per_creator: int) -> pd.DataFrame:
    """Business rules after ranking: at most ``max_per_creator`` items per creator,
    so one prolific creator cannot fill the page; then the top ``k`` by score."""
    ordered = scored.sort_values("click_probability", ascending=False, kind="stable")
    per_creator = ordered.groupby("creator_id").cumcount()
    chosen = ordered[per_creator < max_per_creator].head(k)
    return chosen[["item_id", "category", "creator_id", "click_probability",
                   "retrieval_score"]].reset_index(drop=True)
