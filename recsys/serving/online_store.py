"""The online feature store: each user's features as of the served version's push,
and the engagements received since, for the service's requests.

Feast's semantics: a *materialize* step writes the latest row per user (the
pushed snapshot, computed by the training join at the push's ``as_of``) into the
store; requests read one key. Rows are keyed by the version they were pushed
with, so a model version and its features switch together, and a rollback reads
the rows of the version it goes back to (materialized again if they expired).
Engagement events are kept per user, not per version: they are facts, and
``recsys.core.online_features`` folds those after a version's ``as_of`` into its
rows.

- ``EmbeddedStore``: the snapshot in this process's memory (the default; fits a
  catalog's worth of users on one machine, and needs nothing else running);
- ``RedisStore``: Redis, shared by every replica of the service; a version's rows
  are written once (a ``SET NX`` lock, then a marker key written last).

Item features stay in the service's memory in both: a request ranks hundreds of
items, and the catalog fits (1M items x the item columns).
"""

import json
import threading
import time
from collections import defaultdict, deque
from urllib.parse import parse_qs, urlparse

import numpy as np
import pandas as pd

from recsys.core.contracts import EVENT_TS, USER_ID
from recsys.core.features import FeatureRegistry
from recsys.core.online_features import EVENT_COLUMNS
from recsys.serving.snapshot import FeatureSnapshot

# Engagements kept per user (the newest): more than a history holds, and enough
# for a day of an active user's impressions between two pushes.
EVENTS_PER_USER = 1000


class FeatureStoreError(OSError):
    """The store cannot be reached or holds something unreadable; the message says which."""


class EmbeddedStore:
    """Users of the loaded snapshots and received events, in this process."""

    name = "embedded"

    def __init__(self, events_per_user: int = EVENTS_PER_USER):
        self._snapshots: dict[str, FeatureSnapshot] = {}
        self._events = defaultdict(lambda: deque(maxlen=events_per_user))
        self._lock = threading.Lock()

    def prepare(self, key: str, snapshot: FeatureSnapshot) -> dict:
        self._snapshots[key] = snapshot
        return {"users": len(snapshot.user_index), "materialized": False}

    def retire(self, key: str) -> None:
        self._snapshots.pop(key, None)

    def user(self, key: str, user_id: str) -> tuple[dict | None, pd.DataFrame | None]:
        """The user's row in version ``key`` (None if unknown) and their events (None
        if there are none)."""
        row, known = self._snapshots[key].user(user_id)
        with self._lock:
            events = list(self._events.get(user_id, ()))
        return (row if known else None), _events_frame(events)

    def add_events(self, events: pd.DataFrame) -> None:
        rows = events[list(EVENT_COLUMNS)].itertuples(index=False, name=None)
        with self._lock:
            for row in rows:
                self._events[row[0]].append(row)

    def close(self) -> None:
        pass


class RedisStore:
    """Users in Redis: ``<namespace>:<key>:u:<user_id>`` holds a user's row as JSON,
    ``<namespace>:<key>:ready`` says the version ``key`` is materialized (written
    last), ``<namespace>:events:<user_id>`` holds their newest events. Rows and
    events expire after ``ttl_days`` (a version older than that is materialized
    again when it is served again)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        namespace: str = "recsys",
        ttl_days: float = 8.0,
        timeout_seconds: float = 0.05,
        events_per_user: int = EVENTS_PER_USER,
    ):
        import redis

        parsed = urlparse(url)
        options = parse_qs(parsed.query)
        self.namespace = options.get("namespace", [namespace])[0]
        self.url = parsed._replace(query="").geturl()
        self.ttl = int(ttl_days * 86_400)
        self.events_per_user = events_per_user
        self.client = redis.Redis.from_url(
            self.url, socket_timeout=timeout_seconds, socket_connect_timeout=1.0
        )
        # Materializing writes big pipelines: a longer timeout than a request's.
        self.bulk = redis.Redis.from_url(self.url, socket_timeout=60, socket_connect_timeout=5)
        self._registries: dict[str, FeatureRegistry] = {}
        try:
            self.client.ping()
        except redis.RedisError as error:
            raise FeatureStoreError(
                f"feature store {self.url}: cannot reach Redis ({error})"
            ) from None

    def _key(self, key: str, suffix: str) -> str:
        return f"{self.namespace}:{key}:{suffix}"

    def _events_key(self, user_id: str) -> str:
        return f"{self.namespace}:events:{user_id}"

    def prepare(self, key: str, snapshot: FeatureSnapshot, wait_seconds: float = 600) -> dict:
        """Materialize version ``key``'s users unless another writer did or does."""
        self._registries[key] = snapshot.registry
        ready, lock = self._key(key, "ready"), self._key(key, "materializing")
        deadline = time.monotonic() + wait_seconds
        while True:
            marker = self.bulk.get(ready)
            if marker is not None:
                return {**json.loads(marker), "materialized": False}
            if self.bulk.set(lock, "1", nx=True, ex=int(wait_seconds)):
                try:
                    users = self._materialize(key, snapshot)
                    meta = {"users": users, "at": int(time.time())}
                    self.bulk.set(ready, json.dumps(meta), ex=self.ttl)
                    return {**meta, "materialized": True}
                finally:
                    self.bulk.delete(lock)
            if time.monotonic() > deadline:
                raise FeatureStoreError(
                    f"feature store {self.url}: version {key} was being materialized by "
                    f"another process for {wait_seconds:.0f} s; delete {lock} if it died"
                )
            time.sleep(0.5)

    def _materialize(self, key: str, snapshot: FeatureSnapshot, chunk: int = 20_000) -> int:
        """Every user row as JSON (pandas writes the lines, not per-row Python), set
        in pipelined chunks."""
        users = pd.DataFrame(snapshot.users)
        for start in range(0, len(users), chunk):
            part = users.iloc[start : start + chunk]
            lines = part.to_json(orient="records", lines=True).splitlines()
            pipe = self.bulk.pipeline(transaction=False)
            for user_id, line in zip(part[USER_ID].astype(str), lines, strict=True):
                pipe.set(self._key(key, f"u:{user_id}"), line, ex=self.ttl)
            pipe.execute()
        return len(users)

    def retire(self, key: str) -> None:
        self._registries.pop(key, None)  # the rows expire on their own

    def user(self, key: str, user_id: str) -> tuple[dict | None, pd.DataFrame | None]:
        import redis

        pipe = self.client.pipeline(transaction=False)
        pipe.get(self._key(key, f"u:{user_id}"))
        pipe.lrange(self._events_key(user_id), 0, -1)
        try:
            row, events = pipe.execute()
        except redis.RedisError as error:
            raise FeatureStoreError(f"feature store {self.url}: {error}") from None
        frame = _events_frame([json.loads(event) for event in events])
        if row is None:
            return None, frame
        return _decode(json.loads(row), self._registries[key]), frame

    def add_events(self, events: pd.DataFrame) -> None:
        import redis

        lines = events[list(EVENT_COLUMNS)].to_json(orient="values", lines=False)
        pipe = self.client.pipeline(transaction=False)
        for user_id, event in zip(events[USER_ID].astype(str), json.loads(lines), strict=True):
            key = self._events_key(user_id)
            pipe.rpush(key, json.dumps(event))
            pipe.ltrim(key, -self.events_per_user, -1)
            pipe.expire(key, self.ttl)
        try:
            pipe.execute()
        except redis.RedisError as error:
            raise FeatureStoreError(f"feature store {self.url}: {error}") from None

    def close(self) -> None:
        self.client.close()
        self.bulk.close()


def _events_frame(events: list) -> pd.DataFrame | None:
    if not events:
        return None
    return pd.DataFrame(events, columns=list(EVENT_COLUMNS)).astype({EVENT_TS: np.int64})


def _decode(values: dict, registry: FeatureRegistry) -> dict[str, np.ndarray]:
    """A stored row as the snapshot gives it: arrays of length 1 in the registry's types."""
    row = {}
    for name, value in values.items():
        feature = registry.features.get(name)
        text = feature is None or feature.dtype == "string" or feature.is_list
        column = np.empty(1, dtype=object if text else feature.dtype)
        column[0] = value
        row[name] = column
    return row


def open_store(spec: str):
    """``embedded`` or a Redis URL (``redis://host:port/db?namespace=...``)."""
    if spec in ("", "embedded"):
        return EmbeddedStore()
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec)
    raise ValueError(
        f"feature store {spec!r}: use 'embedded' or a Redis URL such as redis://127.0.0.1:6379/0"
    )
