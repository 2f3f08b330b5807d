"""Who and what the per-slice metrics and checks look at."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recsys.core.contracts import USER_ID


@dataclass
class Slices:
    """Fixed once per run so candidate and champion are sliced identically: new users
    (no training click), heavy users (at least the top decile of training clicks
    among the evaluated users), and the most frequent item categories of the eval
    impressions (``category``: the registry feature with role category)."""

    train_clicks_per_user: pd.Series
    heavy_floor: float
    categories: list

    @classmethod
    def of(
        cls,
        users: np.ndarray,
        train_clicks: pd.DataFrame,
        eval_examples: pd.DataFrame | None = None,
        top_categories: int = 0,
        category: str | None = None,
    ) -> "Slices":
        per_user = train_clicks[USER_ID].value_counts()
        evaluated = per_user.reindex(users, fill_value=0).to_numpy()
        heavy_floor = max(np.quantile(evaluated, 0.9), 1) if len(evaluated) else 1
        categories = (
            []
            if eval_examples is None or category is None
            else list(eval_examples[category].astype(str).value_counts().index[:top_categories])
        )
        return cls(per_user, heavy_floor, categories)

    def masks(self, user_ids, categories=None) -> dict[str, np.ndarray]:
        """Boolean masks over rows given each row's user (and item category, for the
        category slices)."""
        clicks = self.train_clicks_per_user.reindex(np.asarray(user_ids), fill_value=0).to_numpy()
        masks = {
            "all": np.ones(len(clicks), bool),
            "new_users": clicks == 0,
            "heavy_users": clicks >= self.heavy_floor,
        }
        if self.categories:
            categories = np.asarray(categories).astype(str)
        for category in self.categories:
            masks[f"category={category}"] = categories == category
        return masks
