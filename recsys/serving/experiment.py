"""A/B tests: users split between arms by a stable hash, each arm a funnel setting.

An experiment file (YAML or JSON) names the experiment and its arms; the first arm
is the control:

    name: ranker-vs-retrieval
    arms:
      - {name: funnel, share: 0.5}
      - {name: retrieval-order, share: 0.5, order: retrieval}
      - {name: capped, share: 0.0, rerank: {max_per_creator: 2}, explore_share: 0.05}

An arm may change the order the candidates are ranked in (``ranker``: the
ranker's score, as the funnel serves; ``retrieval``: retrieval's score, the
ranker skipped in effect), the re-ranking rules (over the rules pushed with the
models) and exploration. A user's arm is a pure function of the experiment's name
and the user id (SHA-256, portable to any client or language): the same user
sees the same arm on every request and every replica, and a new experiment name
reshuffles users. Arms that are model versions are separate deployments behind a
router that splits on the same hash; this file covers settings of one version.
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import yaml

from recsys.core import storage
from recsys.serving.exploration import ExplorationConfig
from recsys.serving.rerank import RerankConfig, parse_rerank_config

ORDERS = ("ranker", "retrieval")


@dataclass(frozen=True)
class Arm:
    name: str
    share: float
    order: str = "ranker"
    rerank: dict = field(default_factory=dict)  # overrides of the pushed rules
    exploration: ExplorationConfig = ExplorationConfig()

    def rules(self, pushed: RerankConfig) -> RerankConfig:
        """The re-ranking rules of this arm: the pushed ones with its overrides."""
        if not self.rerank:
            return pushed
        return parse_rerank_config({**json.loads(pushed.to_json()), **self.rerank})


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]

    def __post_init__(self):
        names = [arm.name for arm in self.arms]
        if not self.name or not self.arms:
            raise ValueError("an experiment needs a name and at least one arm")
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.name}: arm names repeat: {names}")
        shares = np.array([arm.share for arm in self.arms])
        if (shares < 0).any() or not np.isclose(shares.sum(), 1.0):
            raise ValueError(
                f"experiment {self.name}: arm shares must be >= 0 and add up to 1, got "
                f"{dict(zip(names, shares.tolist(), strict=True))}"
            )

    def bucket(self, user_id: str) -> float:
        """The user's place in [0, 1): the first 60 bits of SHA-256(name/user_id)."""
        digest = hashlib.sha256(f"{self.name}/{user_id}".encode()).hexdigest()
        return int(digest[:15], 16) / 16**15

    def arm_of(self, user_id: str) -> Arm:
        edges = np.cumsum([arm.share for arm in self.arms])
        index = int(np.searchsorted(edges, self.bucket(str(user_id)), side="right"))
        return self.arms[min(index, len(self.arms) - 1)]

    @classmethod
    def parse(cls, spec: dict, source: str = "experiment") -> "Experiment":
        """From the file's mapping; mistakes are ValueErrors naming ``source``."""
        if not isinstance(spec, dict) or not isinstance(spec.get("arms"), list):
            raise ValueError(f"{source}: expected a mapping with 'name' and a list of 'arms'")
        arms = []
        allowed = {"name", "share", "order", "rerank", "explore_share", "explore_temperature"}
        for i, arm in enumerate(spec["arms"]):
            where = f"{source}: arm {i + 1}"
            if not isinstance(arm, dict) or "name" not in arm or "share" not in arm:
                raise ValueError(f"{where}: needs 'name' and 'share'")
            unknown = sorted(set(arm) - allowed)
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
            if arm.get("order", "ranker") not in ORDERS:
                raise ValueError(f"{where}: order must be one of {ORDERS}, got {arm['order']!r}")
            try:
                rerank = dict(arm.get("rerank") or {})
                parse_rerank_config(rerank)  # unknown or invalid rules fail here
                arms.append(
                    Arm(
                        str(arm["name"]),
                        float(arm["share"]),
                        arm.get("order", "ranker"),
                        rerank,
                        ExplorationConfig(
                            float(arm.get("explore_share", 0.0)),
                            float(arm.get("explore_temperature", 1.0)),
                        ),
                    )
                )
            except (TypeError, ValueError) as error:
                raise ValueError(f"{where}: {error}") from None
        return cls(str(spec.get("name", "")), tuple(arms))

    @classmethod
    def load(cls, path: str) -> "Experiment":
        try:
            spec = yaml.safe_load(storage.read_text(path))
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"experiment file {path}: {error}") from None
        return cls.parse(spec, path)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))
