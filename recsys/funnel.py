"""Online recommendations: retrieval top-N, then ranking, then re-ranking to K.

``Funnel.recommend(user_id, context)`` runs the three steps on one request. The
models are reached through a backend, all with one interface (``signature`` and
``predict`` by model name):

- ``InProcessBackend``: the newest pushed SavedModels, loaded in this process;
- ``GrpcBackend``: TF Serving's ``PredictionService`` over gRPC
  (``tensorflow-serving-api``), signatures from ``GetModelMetadata``;
- ``RestBackend``: TF Serving's REST API (``/v1/models/<name>:predict``, columnar
  "inputs"), signatures from ``/v1/models/<name>/metadata``.

Requests are built by ``modeling.raw_arrays``, the function evaluation and push's
warmup records use, from the feature snapshot pushed with the models (it stands in
for an online feature store). With a ``ServingLog``, every served item's features
are logged in the serving-log layout ingest reads, which is what the validate
stage's training/serving skew check compares with the training examples.
"""

import base64
import json
import os
import time
import urllib.request
import uuid
from dataclasses import dataclass, field, replace

import recsys  # noqa: F401

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from components.features import preprocessing
from components.push.push import RERANK_FILE
from components.push.serving_root import SNAPSHOT_DIR, served_version
from components.rerank.rerank import Candidates, RerankConfig, parse_rerank_config, rerank
from components.train_ranking.train_ranking import (PROBABILITY_OUTPUT, SCORE_OUTPUT,
                                                    WATCH_OUTPUT)
from recsys import modeling
from recsys.tables import UNKNOWN, read_dataset

RETRIEVAL, RANKING = "retrieval", "ranking"
SIGNATURE = "serving_default"


@dataclass
class Context:
    """What the request knows besides the user: its time (default: now)."""
    at: pd.Timestamp | None = None

    def columns(self) -> dict[str, np.ndarray]:
        at = self.at if self.at is not None else pd.Timestamp.now(tz="UTC")
        return {"hour_of_day": np.array([at.hour]), "day_of_week": np.array([at.dayofweek]),
                "event_ts": np.array([int(at.timestamp())])}


class FeatureSnapshot:
    """User and item features (and item-tower embeddings) by id, as numpy columns."""

    def __init__(self, users: pd.DataFrame | None, items: pd.DataFrame,
                 item_embeddings: pd.DataFrame | None = None):
        """``users`` may be None when queries bring their own user features
        (offline evaluation)."""
        users = users if users is not None else pd.DataFrame({"user_id": []})
        self.user_index = pd.Index(users["user_id"].astype(str))
        self.users = {name: users[name].to_numpy() for name in users.columns}
        self.item_index = pd.Index(items["item_id"].astype(str))
        self.items = {name: items[name].to_numpy() for name in items.columns}
        self.embeddings = None
        if item_embeddings is not None:
            rows = pd.Index(item_embeddings["item_id"].astype(str)).get_indexer(self.item_index)
            matrix = np.stack(item_embeddings["embedding"].to_numpy())
            # Items without an embedding get zeros: similar to nothing under MMR.
            self.embeddings = np.where((rows >= 0)[:, None], matrix[np.maximum(rows, 0)], 0.0)

    @classmethod
    def load(cls, directory: str) -> "FeatureSnapshot":
        """A pushed snapshot: ``users/``, ``items/`` and optionally ``item_embeddings/``."""
        embeddings = os.path.join(directory, "item_embeddings")
        return cls(read_dataset(os.path.join(directory, "users")),
                   read_dataset(os.path.join(directory, "items")),
                   read_dataset(embeddings) if os.path.isdir(embeddings) else None)

    def user(self, user_id: str) -> tuple[dict[str, np.ndarray], bool]:
        """One user's feature columns (length 1) and whether the user is known. An
        unknown user gets defaults with ``user_features_missing`` set and an empty
        history: the cold-start row the model saw in training for users without
        features."""
        row = self.user_index.get_indexer([user_id])[0]
        if row >= 0:
            return {name: values[row:row + 1] for name, values in self.users.items()}, True
        columns = {}
        for name, values in self.users.items():
            default = UNKNOWN if values.dtype == object else 0
            columns[name] = np.array([default], dtype=values.dtype)
        history = np.empty(1, dtype=object)
        history[0] = []
        columns.update(user_id=np.array([user_id], dtype=object), user_features_missing=
                       np.array([1], dtype=self.users["user_features_missing"].dtype),
                       user_history_items=history)
        return columns, False

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Row of each id in the snapshot, -1 where unknown."""
        return self.item_index.get_indexer(item_ids)


def pushed_rerank_config(snapshot_dir: str) -> RerankConfig:
    """The re-ranking rules pushed with a version (defaults for older pushes)."""
    path = os.path.join(snapshot_dir, RERANK_FILE)
    if not os.path.exists(path):
        return RerankConfig()
    with open(path) as handle:
        return parse_rerank_config(json.load(handle))


class InProcessBackend:
    """SavedModels called in this process: ``model_dirs`` maps "retrieval" and
    "ranking" to their directories (``from_serving_root`` takes the served versions)."""

    def __init__(self, model_dirs: dict[str, str], versions: dict[str, int] | None = None):
        import tensorflow as tf

        self.versions = versions or {}
        self._functions = {name: tf.saved_model.load(directory).signatures[SIGNATURE]
                           for name, directory in model_dirs.items()}

    @classmethod
    def from_serving_root(cls, serving_root: str):
        """The versions ``models.config`` serves, as TF Serving would load them."""
        versions = {name: served_version(serving_root, name) for name in (RETRIEVAL, RANKING)}
        return cls({name: os.path.join(serving_root, name, str(version))
                    for name, version in versions.items()}, versions)

    def signature(self, model: str) -> dict:
        return self._functions[model].structured_input_signature[1]

    def predict(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        signature = self.signature(model)
        outputs = self._functions[model](**{name: tf.constant(values, signature[name].dtype)
                                            for name, values in inputs.items()})
        return {name: value.numpy() for name, value in outputs.items()}


def _spec_from_tensor_info(name: str, dtype, shape) -> "object":
    import tensorflow as tf

    return tf.TensorSpec(shape, tf.dtypes.as_dtype(dtype), name=name)


class GrpcBackend:
    """TF Serving over gRPC: ``PredictionService.Predict``, with each model's input
    signature read once from ``GetModelMetadata``."""

    def __init__(self, target: str, timeout_seconds: float = 1.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(target)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.timeout = timeout_seconds
        self._signatures = {}

    def signature(self, model: str) -> dict:
        from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

        if model not in self._signatures:
            request = get_model_metadata_pb2.GetModelMetadataRequest(
                model_spec=model_pb2.ModelSpec(name=model), metadata_field=["signature_def"])
            response = self.stub.GetModelMetadata(request, timeout=self.timeout * 10)
            signatures = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signatures)
            inputs = signatures.signature_def[SIGNATURE].inputs
            self._signatures[model] = {
                name: _spec_from_tensor_info(
                    name, info.dtype, None if info.tensor_shape.unknown_rank else
                    [d.size if d.size >= 0 else None for d in info.tensor_shape.dim])
                for name, info in inputs.items()}
        return self._signatures[model]

    def predict(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import tensorflow as tf
        from tensorflow_serving.apis import model_pb2, predict_pb2

        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model, signature_name=SIGNATURE))
        signature = self.signature(model)
        for name, values in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(values, signature[name].dtype))
        response = self.stub.Predict(request, timeout=self.timeout)
        return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}

    def close(self):
        self.channel.close()


class RestBackend:
    """TF Serving's REST API: ``POST <url>/v1/models/<name>:predict`` in the columnar
    format, signatures from ``GET <url>/v1/models/<name>/metadata``."""

    def __init__(self, url: str, timeout_seconds: float = 1.0):
        self.url = url.rstrip("/")
        self.timeout = timeout_seconds
        self._signatures = {}

    def _call(self, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
            return json.loads(response.read())

    def _metadata(self, model: str) -> dict:
        """{"inputs": {name: TensorSpec}, "outputs": {name: numpy dtype}}, fetched once."""
        from tensorflow.core.framework import types_pb2

        if model not in self._signatures:
            metadata = self._call(f"/v1/models/{model}/metadata", timeout=self.timeout * 10)
            signature = metadata["metadata"]["signature_def"]["signature_def"][SIGNATURE]
            dtype = lambda info: types_pb2.DataType.Value(info["dtype"])  # noqa: E731
            self._signatures[model] = {
                "inputs": {name: _spec_from_tensor_info(
                    name, dtype(info), None if info["tensor_shape"].get("unknown_rank") else
                    [int(d["size"]) if int(d["size"]) >= 0 else None
                     for d in info["tensor_shape"].get("dim", [])])
                    for name, info in signature["inputs"].items()},
                "outputs": {name: _numpy_dtype(dtype(info))
                            for name, info in signature["outputs"].items()}}
        return self._signatures[model]

    def signature(self, model: str) -> dict:
        return self._metadata(model)["inputs"]

    def predict(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        body = {"signature_name": SIGNATURE,
                "inputs": {name: _json_values(values) for name, values in inputs.items()}}
        outputs = self._call(f"/v1/models/{model}:predict", body)["outputs"]
        dtypes = self._metadata(model)["outputs"]
        return {name: np.asarray(values, dtype=dtypes[name]) for name, values in outputs.items()}


def _numpy_dtype(data_type: int):
    import tensorflow as tf

    dtype = tf.dtypes.as_dtype(data_type)
    return object if dtype == tf.string else dtype.as_numpy_dtype


def _json_values(values: np.ndarray):
    """JSON for a tensor: strings as text (TF Serving wants {"b64": ...} only for
    bytes that are not UTF-8, which ids and categories never are)."""
    if values.dtype == object:
        return [_json_values(row) for row in values] if values.ndim > 1 else [
            v if isinstance(v, str) else {"b64": base64.b64encode(v).decode()} for v in values]
    return values.tolist()


def _text(values: np.ndarray) -> np.ndarray:
    """String tensors come back as bytes (in process, gRPC) or str (REST)."""
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values],
                    dtype=object)


@dataclass
class Recommendations:
    items: pd.DataFrame  # item_id, score, click_probability, ..., best first
    request_id: str
    version: int | None  # of the feature snapshot and re-ranking rules (= retrieval's)
    known_user: bool
    removed: dict  # candidates removed before the page: rule -> count
    milliseconds: dict = field(default_factory=dict)  # per step


# Rows per model call when many queries are scored at once (offline evaluation).
PREDICT_BATCH_ROWS = 8192


class Funnel:
    def __init__(self, backend, features: FeatureSnapshot,
                 rerank_config: RerankConfig = RerankConfig(),
                 serving_log: "ServingLog | None" = None, version: int | None = None):
        self.backend, self.features, self.config = backend, features, rerank_config
        self.serving_log, self.version = serving_log, version
        self.retrieval_signature = backend.signature(RETRIEVAL)
        self.ranking_signature = backend.signature(RANKING)
        self.user_inputs = [name for name in self.ranking_signature
                            if name in preprocessing.QUERY_TOWER_FEATURES]
        self.item_inputs = [name for name in self.ranking_signature
                            if name not in self.user_inputs]

    @classmethod
    def from_serving_root(cls, serving_root: str, backend=None,
                          rerank_config: RerankConfig | None = None, **kwargs) -> "Funnel":
        """The served models (in this process unless another backend is given), with the
        feature snapshot and re-ranking rules pushed with the served retrieval version
        (the rules the evaluation measured, unless ``rerank_config`` is given)."""
        backend = backend or InProcessBackend.from_serving_root(serving_root)
        version = served_version(serving_root, RETRIEVAL)
        snapshot = os.path.join(serving_root, SNAPSHOT_DIR, str(version))
        if rerank_config is None:
            rerank_config = pushed_rerank_config(snapshot)
        return cls(backend, FeatureSnapshot.load(snapshot), rerank_config, version=version,
                   **kwargs)

    def recommend(self, user_id: str, context: Context | None = None,
                  k: int | None = None) -> Recommendations:
        """One request: the user's features from the snapshot plus the context."""
        clock = {}
        user, known = self.features.user(str(user_id))
        query = {**user, **(context or Context()).columns()}
        (page, removed, served_rows), = self.pages(query, k, clock)
        request_id = uuid.uuid4().hex
        if self.serving_log is not None:
            started = time.perf_counter()
            self.serving_log.append(request_id, query, {
                name: self.features.items[name][served_rows] for name in self.item_inputs})
            clock["log"] = (time.perf_counter() - started) * 1000
        return Recommendations(page, request_id, self.version, known, removed, clock)

    def pages(self, queries: dict, k: int | None = None,
              clock: dict | None = None) -> list[tuple[pd.DataFrame, dict, np.ndarray]]:
        """Pages for many queries at once (raw query columns, one row per query):
        one (page, removed-counts, snapshot rows of the page's items) per query.
        ``clock`` collects milliseconds per step."""
        if isinstance(queries, pd.DataFrame):
            queries = {name: queries[name].to_numpy() for name in queries.columns}
        started = time.perf_counter()

        def lap(step):
            nonlocal started
            if clock is not None:
                clock[step] = (time.perf_counter() - started) * 1000
            started = time.perf_counter()

        retrieved = self._predict(RETRIEVAL, modeling.raw_arrays(
            queries, self.retrieval_signature))
        n_queries, n_retrieved = retrieved["item_ids"].shape
        item_ids = _text(retrieved["item_ids"].ravel())
        retrieval_scores = retrieved["scores"].ravel()
        rows = self.features.item_rows(item_ids)
        in_snapshot = rows >= 0
        query_of = np.repeat(np.arange(n_queries), n_retrieved)[in_snapshot]
        item_ids, rows, retrieval_scores = (item_ids[in_snapshot], rows[in_snapshot],
                                            retrieval_scores[in_snapshot])
        lap("retrieval")

        inputs = modeling.raw_arrays(
            {name: self.features.items[name][rows] for name in self.item_inputs},
            {name: self.ranking_signature[name] for name in self.item_inputs})
        user_arrays = modeling.raw_arrays(queries, {name: self.ranking_signature[name]
                                                    for name in self.user_inputs})
        inputs.update({name: values[query_of] for name, values in user_arrays.items()})
        ranked = self._predict(RANKING, inputs)
        lap("ranking")

        config = replace(self.config, k=k) if k else self.config
        items = self.features.items
        bounds = np.searchsorted(query_of, np.arange(n_queries + 1))
        missing = np.bincount(np.repeat(np.arange(n_queries), n_retrieved)[~in_snapshot],
                              minlength=n_queries)
        results = []
        for query in range(n_queries):
            mine = slice(bounds[query], bounds[query + 1])
            candidate_rows = rows[mine]
            page = rerank(Candidates(
                item_ids[mine], np.asarray(ranked[SCORE_OUTPUT][mine], dtype=np.float64),
                items["creator_id"][candidate_rows], items["category"][candidate_rows],
                items["item_age_days"][candidate_rows],
                self.features.embeddings[candidate_rows]
                if self.features.embeddings is not None else None),
                config, watched=list(queries["user_history_items"][query]))
            chosen = page.positions + bounds[query]
            frame = pd.DataFrame({
                "item_id": item_ids[chosen], "score": page.scores,
                "click_probability": ranked[PROBABILITY_OUTPUT][chosen],
                "expected_watch_seconds": ranked[WATCH_OUTPUT][chosen],
                "retrieval_score": retrieval_scores[chosen],
                "category": items["category"][rows[chosen]],
                "creator_id": items["creator_id"][rows[chosen]]})
            results.append((frame, {"not_in_snapshot": int(missing[query]), **page.removed},
                            rows[chosen]))
        lap("rerank")
        return results

    def _predict(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``backend.predict`` in slices of PREDICT_BATCH_ROWS rows, concatenated."""
        n = len(next(iter(inputs.values())))
        if n <= PREDICT_BATCH_ROWS:
            return self.backend.predict(model, inputs) if n else self._empty(model)
        parts = [self.backend.predict(model, {name: values[start:start + PREDICT_BATCH_ROWS]
                                              for name, values in inputs.items()})
                 for start in range(0, n, PREDICT_BATCH_ROWS)]
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

    @staticmethod
    def _empty(model: str) -> dict[str, np.ndarray]:
        names = ((SCORE_OUTPUT, PROBABILITY_OUTPUT, WATCH_OUTPUT) if model == RANKING
                 else ("item_ids", "scores"))
        return {name: np.zeros((0,)) for name in names}


class ServingLog:
    """The features of every served item, one row per impression, written as
    ``part-*.parquet`` files under ``directory``: point a run's
    ``<data_root>/serving_log`` at it and the validate stage compares them with the
    training examples (skew). Rows are buffered and written every ``rows_per_file``
    rows and on ``close()``."""

    def __init__(self, directory: str, rows_per_file: int = 50_000):
        self.directory, self.rows_per_file = directory, rows_per_file
        os.makedirs(directory, exist_ok=True)
        self._parts: list[pd.DataFrame] = []
        self._rows = 0

    def append(self, request_id: str, query: dict[str, np.ndarray],
               served_items: dict[str, np.ndarray]) -> None:
        """One request: its query columns (one row) and the served items' columns."""
        n = len(next(iter(served_items.values())))
        rows = {"event_id": [f"{request_id}-{i}" for i in range(n)],
                "event_ts": np.repeat(query["event_ts"], n)}
        for name, values in query.items():
            if name != "event_ts":
                rows[name] = np.repeat(values, n)
        rows.update(served_items)
        self._parts.append(pd.DataFrame(rows))
        self._rows += n
        if self._rows >= self.rows_per_file:
            self.flush()

    def flush(self) -> str | None:
        if not self._parts:
            return None
        frame = pd.concat(self._parts, ignore_index=True)
        frame["user_history_items"] = frame["user_history_items"].map(list)
        path = os.path.join(self.directory,
                            f"part-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.parquet")
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
        self._parts, self._rows = [], 0
        return path

    def close(self) -> None:
        self.flush()
