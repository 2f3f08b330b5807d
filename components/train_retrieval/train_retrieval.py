"""Train the two-tower retrieval model (TFRS) and export it for TF Serving.

Positives are clicked impressions. The query tower sees the user (id, attributes,
trailing statistics, the engagement history before the event) and the request's
context; the candidate tower sees only static item attributes (each tower takes
the registry's features for ``retrieval.query`` / ``retrieval.candidate``). The
loss is a sampled softmax over L2-normalised embeddings with a temperature, in
the form large platforms describe:

- in-batch negatives, with the logQ correction (Yi et al., RecSys 2019): popular
  items appear as in-batch negatives in proportion to their popularity, which
  would teach the model to demote them, so log(sampling probability) is
  subtracted from each logit; probabilities are click counts over the window;
- mixed negative sampling (Yang et al., WWW 2020): ``uniform_negatives`` items
  drawn uniformly from the corpus are added to every batch, so the long tail is
  seen as negatives too; the correction then uses each item's expected count in
  the mixed sample;
- accidental hits (the positive item again among the negatives) are removed;
- positives optionally weighted by engagement (``positive_weighting="watch_time"``).

Training stops early when Recall@K on the validation positives (full corpus,
the user's training clicks masked) stops improving, and keeps the best epoch's
weights. Seeded: the same inputs and seed give the same model.
"""

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tensorflow_transform as tft

from recsys.components.train_retrieval.config import RetrievalConfig
from recsys.core import contracts, distributed, modeling, warm_start
from recsys.core.contracts import CANDIDATE_TOWER, QUERY_TOWER, WATCH_SECONDS
from recsys.core.features import FeatureRegistry, load_registry, transformed_name
from recsys.core.limits import SHUFFLE_BUFFER
from recsys.core.progress import log
from recsys.core.ranking import hnsw_index, recall_vs_exact
from recsys.core.ranking import top_k as exact_top_k
from recsys.core.tables import read_dataset, write_dataset

# The transformed id columns (vocabulary indices) of users and items.
USER_INDEX = transformed_name(contracts.USER_ID, "vocabulary")
ITEM_INDEX = transformed_name(contracts.ITEM_ID, "vocabulary")
# Validation recall is computed on at most this many positives (a seeded sample).
MAX_VALIDATION_QUERIES = 5000
# Scores held at once while ranking the catalog for validation (float32: 200 MB).
SCORE_CHUNK_ELEMENTS = 50_000_000


class TwoTowerModel(tfrs.Model):
    def __init__(
        self,
        transform_output,
        registry: FeatureRegistry,
        config: RetrievalConfig,
        corpus: dict[str, np.ndarray],
        item_frequency: np.ndarray,
    ):
        """``corpus``: transformed candidate features, one row per item, the pool of
        uniform negatives; ``item_frequency``: each item index's share of the
        training positives (its chance to be an in-batch negative)."""
        super().__init__()
        self.query_tower = modeling.Tower(
            transform_output,
            registry,
            QUERY_TOWER,
            config.embedding_dim,
            [64],
            config.embedding_dim,
            normalize=True,
            sequence_encoder=config.history_encoder,
            name="query_tower",
        )
        self.candidate_tower = modeling.Tower(
            transform_output,
            registry,
            CANDIDATE_TOWER,
            config.embedding_dim,
            [64],
            config.embedding_dim,
            normalize=True,
            name="candidate_tower",
        )

        self.task = tfrs.tasks.Retrieval(
            temperature=config.temperature, remove_accidental_hits=True
        )
        self.corpus = {name: tf.constant(values) for name, values in corpus.items()}
        self.corpus_size = len(corpus[ITEM_INDEX])
        self.uniform_negatives = config.uniform_negatives
        self.batch_size = config.batch_size
        self.item_frequency = (
            tf.constant(item_frequency, tf.float32) if config.logq_correction else None
        )

    # Not NO_AUTOGRAPH: TFRS's Retrieval.call relies on autograph (len() of a shape).
    def compute_loss(self, features, training=False):
        queries = self.query_tower(features)
        candidates = self.candidate_tower(features)
        item_ids = tf.reshape(features[ITEM_INDEX], [-1])
        uniform_negatives = self.uniform_negatives if training else 0
        if uniform_negatives:
            drawn = tf.random.uniform([uniform_negatives], 0, self.corpus_size, dtype=tf.int64)
            sampled = {name: tf.gather(values, drawn) for name, values in self.corpus.items()}
            candidates = tf.concat([candidates, self.candidate_tower(sampled)], axis=0)
            item_ids = tf.concat([item_ids, tf.reshape(sampled[ITEM_INDEX], [-1])], axis=0)
        probability = (
            mixed_sampling_probability(
                self.item_frequency, item_ids, uniform_negatives, self.batch_size, self.corpus_size
            )
            if self.item_frequency is not None
            else None
        )
        return self.task(
            queries,
            candidates,
            sample_weight=features.get("sample_weight"),
            candidate_sampling_probability=probability,
            candidate_ids=item_ids,
            compute_metrics=False,
        )


def mixed_sampling_probability(
    item_frequency, item_ids, uniform_negatives: int, batch_size: int, corpus_size: int
):
    """Each candidate's expected count in one batch's negatives, divided by the batch
    size: B in-batch draws that follow click frequency p_i plus M uniform draws over
    N items give B * p_i + M / N; dividing by B leaves the softmax unchanged."""
    return tf.gather(item_frequency, item_ids) + uniform_negatives / (batch_size * corpus_size)


def tower_columns(registry: FeatureRegistry, *towers: str) -> list[str]:
    """The transformed columns the towers read."""
    return list(
        dict.fromkeys(f.transformed_name for tower in towers for f in registry.select(tower=tower))
    )


def corpus_table(
    registry: FeatureRegistry, *datasets: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Candidate features of every item in the data, one row per item (they are
    static, so any row of an item will do: the first)."""
    columns = tower_columns(registry, CANDIDATE_TOWER)
    merged = {name: np.concatenate([d[name] for d in datasets]) for name in columns}
    _, first = np.unique(merged[ITEM_INDEX], return_index=True)
    return {name: values[first] for name, values in merged.items()}


def streamed_corpus(registry: FeatureRegistry, *streams: "modeling.ExampleStream") -> dict:
    """``corpus_table`` of streamed datasets: each item's first row, kept as the data
    streams by (one row per item is what stays whole)."""
    kept: list[dict[str, np.ndarray]] = []
    seen = np.zeros(0, dtype=np.int64)
    for stream in streams:
        for part in stream.scan():
            items = part[ITEM_INDEX]
            _, first = np.unique(items, return_index=True)
            new = first[~np.isin(items[first], seen)]
            if len(new):
                kept.append({name: values[new] for name, values in part.items()})
                seen = np.union1d(seen, items[new])
    return corpus_table(registry, *kept)


class ValidationRecall(tf.keras.callbacks.Callback):
    """Recall@K of the validation positives over the whole corpus after each epoch,
    with each user's training clicks masked; added to the logs as ``val_recall_at_K``
    (before EarlyStopping reads them)."""

    def __init__(
        self,
        queries: dict[str, np.ndarray],
        corpus: dict[str, np.ndarray],
        train_pairs: np.ndarray,
        k: int,
    ):
        super().__init__()
        self.k, self.corpus, self.queries = k, corpus, queries
        corpus_index = pd.Index(corpus[ITEM_INDEX])
        self.target = corpus_index.get_indexer(queries[ITEM_INDEX])
        rows = pd.DataFrame({"user": queries[USER_INDEX], "row": np.arange(len(self.target))})
        clicked = pd.DataFrame(
            {"user": train_pairs[:, 0], "col": corpus_index.get_indexer(train_pairs[:, 1])}
        )
        masked = rows.merge(clicked[clicked["col"] >= 0].drop_duplicates(), on="user").sort_values(
            "row", kind="stable"
        )
        self.mask = (masked["row"].to_numpy(), masked["col"].to_numpy())
        clicked_before = np.zeros(len(self.target), dtype=bool)
        clicked_before[masked["row"][masked["col"] == self.target[masked["row"]]]] = True
        # Only positives that can be hits: in the corpus and new to the user.
        self.valid = (self.target >= 0) & ~clicked_before

    def recall(self) -> float:
        model = self.model
        candidates = modeling.predict_transformed(model.candidate_tower, self.corpus)
        queries = modeling.predict_transformed(model.query_tower, self.queries)
        mask_rows, mask_cols = self.mask
        hits = []
        # Score in chunks of rows so a large catalog never needs a queries x items matrix.
        step = max(1, SCORE_CHUNK_ELEMENTS // max(len(candidates), 1))
        for start in range(0, len(queries), step):
            stop = min(start + step, len(queries))
            scores = queries[start:stop] @ candidates.T
            in_chunk = slice(*np.searchsorted(mask_rows, [start, stop]))
            scores[mask_rows[in_chunk] - start, mask_cols[in_chunk]] = -np.inf
            rows = np.flatnonzero(self.valid[start:stop])
            target_scores = scores[rows, self.target[start + rows]]
            hits.append((scores[rows] > target_scores[:, None]).sum(axis=1) < self.k)
        hits = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
        return float(hits.mean()) if len(hits) else float("nan")

    def on_epoch_end(self, epoch, logs=None):
        logs[f"val_recall_at_{self.k}"] = self.recall()


def sampled_rows(stream: "modeling.ExampleStream", limit: int, seed: int) -> dict:
    """At most ``limit`` rows of a streamed dataset, a seeded uniform sample in the
    stream's order, picked as it streams."""

    def size(part: dict) -> int:
        return len(next(iter(part.values())))

    total = sum(size(part) for part in stream.scan())
    rows = (
        np.arange(total)
        if total <= limit
        else np.sort(np.random.default_rng(seed).choice(total, limit, replace=False))
    )
    picked, offset = [], 0
    for part in stream.scan():
        n = size(part)
        mine = rows[(rows >= offset) & (rows < offset + n)] - offset
        if len(mine):
            picked.append({name: values[mine] for name, values in part.items()})
        offset += n
    return modeling.concat_arrays(picked) if picked else {}


@dataclass
class Positives:
    """What training needs to know of its positives before it starts, from one pass
    over them: how many, each item's share, the mean positive weight."""

    count: int
    item_frequency: np.ndarray
    mean_weight: float | None
    sample: dict[str, np.ndarray]  # the first rows, to build the model


def count_positives(stream, vocabulary_size: int, weighting: str) -> Positives:
    count, counts, weights, sample = 0, np.zeros(vocabulary_size, np.int64), 0.0, None
    for part in stream.scan():
        items = part[ITEM_INDEX]
        count += len(items)
        counts += np.bincount(items, minlength=vocabulary_size)[:vocabulary_size]
        if weighting != "none":
            weights += float(_raw_weights(part[WATCH_SECONDS]).sum())
        if sample is None:
            sample = {name: values[:2] for name, values in part.items()}
    if weighting != "none" and count and weights == count:  # every weight is 1: no watch time
        raise ValueError(
            "positive_weighting='watch_time' but every clicked training example "
            "has watch_seconds 0 (e.g. MovieLens); use 'none'"
        )
    return Positives(
        count,
        (counts / max(count, 1)).astype(np.float32),
        weights / count if weighting != "none" and count else None,
        sample or {},
    )


def _raw_weights(watch_seconds: np.ndarray) -> np.ndarray:
    return 1.0 + np.log1p(np.maximum(watch_seconds, 0.0))


def positive_weights(watch_seconds: np.ndarray, mean_weight: float) -> np.ndarray:
    """Per-positive loss weights for "watch_time": 1 + log1p(watch seconds), so a
    click without watch time still counts and long watches count more, over their
    mean on all training positives (``count_positives``), so they average 1."""
    return (_raw_weights(watch_seconds) / mean_weight).astype(np.float32)


def masked_clicks(stream, users: np.ndarray) -> np.ndarray:
    """(user, item) index pairs of the training clicks of ``users`` (the validation
    queries' users): what validation masks, without holding every click."""
    pairs = [
        np.stack([part[USER_INDEX][mine], part[ITEM_INDEX][mine]], axis=1)
        for part in stream.scan()
        if (mine := np.isin(part[USER_INDEX], users)).any()
    ]
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def train(
    transformed_train: str,
    transformed_eval: str,
    transform_graph: str,
    config: RetrievalConfig,
    registry: FeatureRegistry | None = None,
    warm_start_dir: str = "",
    shuffle_buffer: int = SHUFFLE_BUFFER,
    worker: int = 0,
    workers: int = 1,
    strategy=None,
) -> tuple[TwoTowerModel, dict]:
    """Train on the clicked rows of ``transformed_train``, streamed from its shards
    (``modeling.ExampleStream``: memory follows ``shuffle_buffer``, not the data);
    ``transformed_eval`` is the validation data (early stopping and the reported
    validation loss). With ``warm_start_dir`` (a ``recsys.core.warm_start``
    checkpoint), start from its weights. ``registry`` says which features each tower
    takes (default: the packaged registry). ``worker`` of ``workers``: this process's
    share of the batches under ``strategy`` (``recsys.core.distributed``); the model
    returned is then a plain copy of the trained one."""
    strategy = strategy or tf.distribute.get_strategy()
    registry = registry or load_registry()
    modeling.set_seed(config.seed)
    transform_output = tft.TFTransformOutput(transform_graph)
    columns = tower_columns(registry, QUERY_TOWER, CANDIDATE_TOWER)
    candidates = tuple(tower_columns(registry, CANDIDATE_TOWER))

    def stream(path, wanted, clicked_only=False):
        return modeling.ExampleStream(path, tuple(wanted), clicked_only, seed=config.seed)

    # Every row's item attributes for the corpus; query features of the clicks only.
    train_items, eval_items = (
        stream(transformed_train, candidates),
        stream(transformed_eval, candidates),
    )
    # Negatives come from the training window's items; validation ranks every item.
    corpus = streamed_corpus(registry, train_items)
    catalog = streamed_corpus(registry, train_items, eval_items)
    wanted = list(dict.fromkeys(columns + [WATCH_SECONDS]))
    train_positives = stream(transformed_train, wanted, clicked_only=True)
    eval_positives = stream(transformed_eval, columns, clicked_only=True)
    vocabulary_size = modeling.id_cardinality(transform_output, registry[contracts.ITEM_ID])
    positives = count_positives(train_positives, vocabulary_size, config.positive_weighting)
    if positives.count < config.batch_size:
        raise ValueError(
            f"train_retrieval: only {positives.count} clicked training examples; "
            f"need at least batch_size={config.batch_size}. Widen the window."
        )
    validation_queries = sampled_rows(eval_positives, MAX_VALIDATION_QUERIES, config.seed)
    if not validation_queries:
        raise ValueError(
            "train_retrieval: the eval split has no clicked examples to validate "
            "on (early stopping needs them). Lengthen eval_days."
        )

    def build():
        return TwoTowerModel(transform_output, registry, config, corpus, positives.item_frequency)

    def create_variables(built):
        return built.query_tower(positives.sample), built.candidate_tower(positives.sample)

    with strategy.scope():
        model = build()
        model.compile(optimizer=tf.keras.optimizers.Adagrad(config.learning_rate))
    warm = warm_start.initialise(
        model, transform_output, warm_start_dir, "train_retrieval", lambda: create_variables(model)
    )
    validation = ValidationRecall(
        validation_queries,
        catalog,
        masked_clicks(train_positives, np.unique(validation_queries[USER_INDEX])),
        config.validation_k,
    )
    callbacks = [validation]
    monitor = f"val_recall_at_{config.validation_k}"
    if config.early_stopping_patience:
        callbacks.append(
            tf.keras.callbacks.EarlyStopping(
                monitor=monitor,
                mode="max",
                patience=config.early_stopping_patience,
                restore_best_weights=True,
            )
        )

    def weights(batch):
        return {"sample_weight": positive_weights(batch[WATCH_SECONDS], positives.mean_weight)}

    per_worker = max(1, config.batch_size // workers)
    metrics = modeling.fit(
        model,
        modeling.distributed(
            strategy,
            workers,
            lambda: train_positives.dataset(
                per_worker,
                shuffle_buffer,
                worker,
                workers,
                extra=weights if positives.mean_weight is not None else None,
            ),
        ),
        modeling.distributed(
            strategy, workers, lambda: eval_positives.validation(per_worker, worker, workers)
        )
        if workers > 1
        else eval_positives.validation(),
        positives.count,
        config.epochs,
        "train_retrieval",
        callbacks,
        steps_per_epoch=modeling.steps_per_epoch(train_positives, per_worker, workers),
        validation_steps=eval_positives.validation_steps(per_worker, workers)
        if workers > 1
        else None,
    )
    history = metrics.pop("history")
    best_epoch = int(np.nanargmax(history[monitor])) + 1
    kept = validation.recall()  # of the weights returned: the best epoch's, if stopping early
    if workers > 1:
        model = distributed.plain_copy(model, build, create_variables)
    log(
        "train_retrieval",
        f"best {monitor} {np.nanmax(history[monitor]):.4f} at epoch "
        f"{best_epoch} of {len(history[monitor])}; the model kept has {kept:.4f}",
    )
    return model, {
        "train_positives": positives.count,
        "eval_positives": sum(len(part[ITEM_INDEX]) for part in eval_positives.scan()),
        "negative_corpus_items": len(corpus[ITEM_INDEX]),
        "validation_catalog_items": len(catalog[ITEM_INDEX]),
        "epochs_run": len(history[monitor]),
        "best_epoch": best_epoch,
        f"best_{monitor}": float(np.nanmax(history[monitor])),
        monitor: kept,
        "warm_start": int(warm["warm_start"]),
        **metrics,
    }


def run(job: dict, worker: int = 0, workers: int = 1) -> dict:
    """The stage as a job (``recsys.core.distributed``): this worker trains its share;
    the chief also writes the warm-start checkpoint and exports. ``job``: the dataset
    and output paths, the config's fields, the schema directory, the warm-start
    checkpoint and the shuffle buffer."""
    strategy = distributed.strategy(workers)  # before any other TensorFlow work
    config = RetrievalConfig(**job["config"])
    registry = load_registry(job["schema_dir"])
    model, metrics = train(
        job["transformed_train"],
        job["transformed_eval"],
        job["transform_graph"],
        config,
        registry,
        job["warm_start_dir"],
        job["shuffle_buffer"],
        worker,
        workers,
        strategy,
    )
    if worker != 0:
        return metrics
    warm_start.save(model, tft.TFTransformOutput(job["transform_graph"]), job["checkpoint"])
    metrics.update(
        export(
            model,
            job["transform_graph"],
            job["item_snapshot"],
            config,
            job["retrieval_model"],
            job["query_model"],
            job["item_embeddings"],
            job["transformed_eval"],
            registry,
        )
    )
    metrics["training_workers"] = workers
    return metrics


def export(
    model: TwoTowerModel,
    transform_graph: str,
    item_snapshot: str,
    config: RetrievalConfig,
    serving_model_dir: str,
    query_model_dir: str,
    item_embeddings_dir: str,
    transformed_eval: str = "",
    registry: FeatureRegistry | None = None,
) -> dict:
    """Write the serving SavedModel (raw user features in, top-K ids and scores out,
    brute-force index, standard ops only), the query-tower SavedModel and the item
    embedding table; with ``config.ann_index``, also an approximate index next to the
    table, its recall against exact search measured on the queries of
    ``transformed_eval``."""
    registry = registry or load_registry()
    transform_output = tft.TFTransformOutput(transform_graph)
    query_model = modeling.RawInputModel(transform_output, model.query_tower)
    candidate_model = modeling.RawInputModel(transform_output, model.candidate_tower)
    query_signature = modeling.raw_input_signature(transform_output, registry.inputs(QUERY_TOWER))
    candidate_signature = modeling.raw_input_signature(
        transform_output, registry.inputs(CANDIDATE_TOWER)
    )

    items = read_dataset(item_snapshot)
    item_embeddings = modeling.predict_in_batches(candidate_model, items, candidate_signature)
    item_ids = items[contracts.ITEM_ID].astype(str).to_numpy()
    write_dataset(
        pa.table(
            {
                contracts.ITEM_ID: item_ids,
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(item_embeddings.astype(np.float32).ravel()), item_embeddings.shape[1]
                ),
            }
        ),
        item_embeddings_dir,
    )

    k = min(config.top_k, len(item_ids))
    index = tfrs.layers.factorized_top_k.BruteForce(query_model, k=k)
    index.index(tf.constant(item_embeddings), identifiers=tf.constant(item_ids))

    @tf.function(input_signature=[query_signature])
    def recommend(features):
        scores, ids = index(features)
        return {contracts.SCORES: scores, contracts.ITEM_IDS: ids}

    tf.saved_model.save(index, serving_model_dir, signatures={contracts.SIGNATURE: recommend})

    @tf.function(input_signature=[query_signature])
    def embed_query(features):
        return {contracts.QUERY_EMBEDDING: query_model(features)}

    tf.saved_model.save(query_model, query_model_dir, signatures={contracts.SIGNATURE: embed_query})
    exported = {"top_k": k, "indexed_items": len(item_ids)}
    if config.ann_index:
        eval_rows = modeling.ExampleStream(
            transformed_eval, tuple(tower_columns(registry, QUERY_TOWER)), seed=config.seed
        )
        query_embeddings = modeling.predict_transformed(
            model.query_tower, sampled_rows(eval_rows, MAX_VALIDATION_QUERIES, config.seed)
        )
        exported.update(
            write_ann_index(
                item_embeddings,
                query_embeddings,
                k,
                os.path.join(item_embeddings_dir, contracts.ANN_INDEX_FILE),
            )
        )
    return exported


def write_ann_index(
    item_embeddings: np.ndarray, query_embeddings: np.ndarray, k: int, path: str
) -> dict:
    """An HNSW graph over the item embeddings (``recsys.core.ranking.hnsw_index``),
    written to ``path``, and its recall@k against exact search on
    ``query_embeddings``. Rows of the index are rows of the embedding table. TF
    Serving cannot run it (faiss is not a TF op): ``recsys serve`` does, next to the
    query tower."""
    import faiss

    items = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    queries = np.ascontiguousarray(query_embeddings, dtype=np.float32)
    index = hnsw_index(items)
    faiss.write_index(index, path)
    _, approximate = index.search(queries, k)
    exact = exact_top_k(queries @ items.T, k)
    return {
        f"ann_recall_at_{k}_vs_exact": recall_vs_exact(approximate, exact),
        "ann_index": os.path.basename(path),
    }
