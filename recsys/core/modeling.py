"""Keras/TFRS building blocks shared by the two trainers (and their warm start).

Both models train on tensorflow-transform outputs and are exported behind the
transform graph, so a SavedModel takes the raw features the registry lists for
its tower and nothing else (``recsys.core.requests`` encodes them).
"""

import contextlib
import hashlib
import itertools
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tensorflow_transform as tft
from tensorflow.python.autograph.core import config as autograph_config

from recsys.core import storage
from recsys.core.contracts import CLICKED, SEQUENCE_ENCODERS
from recsys.core.features import SEQUENCE_PADDING, Feature, FeatureRegistry
from recsys.core.progress import log
from recsys.core.requests import pad_lists, raw_arrays
from recsys.core.tables import read_dataset_table

# Our call methods have no data-dependent Python control flow. Without this,
# autograph transpiles Keras and TFRS internals on the first fit: ~20 s per model.
NO_AUTOGRAPH = tf.autograph.experimental.do_not_convert

# Keras 2's own code needs no autograph (TensorFlow <= 2.15 never converted the
# `keras` package), but TF 2.16's rules exclude `keras` and not `tf_keras`, the same
# code under its new name: every process's first fit and export transpiled Keras'
# training loop, optimizer and layers (~7 of a ranker's 20 s on the sample). The rule
# goes first, as TensorFlow's own do. Subclassed layers (TFRS' tasks, ours) are still
# converted by Keras' Layer.__call__ inside a tf.function, as they were with Keras 2.
autograph_config.CONVERSION_RULES = (
    autograph_config.DoNotConvert("tf_keras"),
    *autograph_config.CONVERSION_RULES,
)


def set_seed(seed: int) -> None:
    tf.keras.utils.set_random_seed(seed)


def id_cardinality(transform_output: tft.TFTransformOutput, feature: Feature) -> int:
    """Rows of ``feature``'s embedding table: its vocabulary (at most ``top_ids``) and
    its hashed buckets, or its category range."""
    if feature.transform == "category":
        return feature.cardinality
    return transform_output.vocabulary_size_by_name(feature.name) + feature.hash_buckets


def sequence_ids(values) -> tf.Tensor:
    """A transformed id sequence as a dense [batch, length] tensor padded with
    SEQUENCE_PADDING: TFT hands the exported model a SparseTensor, training a
    padded array."""
    if isinstance(values, tf.SparseTensor):
        return tf.sparse.to_dense(values, default_value=SEQUENCE_PADDING)
    return tf.convert_to_tensor(values)


class Tower(tf.keras.Model):
    """The registry's features of one ``tower``: embeddings of the ids and
    categories, the mean embedding of each id sequence (the engagement history) and
    the dense features (and crosses), then an MLP.

    With ``history_affinity``, a sequence whose ids share a vocabulary with an id
    feature of the tower (the history and the candidate item, in the ranker) uses
    that feature's embedding table, and the dot product of the sequence's mean
    embedding with the id's embedding is added as a feature: how close the
    candidate is to what the user engaged with. ``id_dropout`` replaces that share
    of the ids (group ``id``) in training with the out-of-vocabulary bucket.

    ``sequence_encoder``: "mean" pools each id sequence's embeddings as a bag;
    "attention" keeps their order: a learned position embedding (newest first, as
    the join writes them) added to each, one self-attention layer over the present
    ones (Keras' MultiHeadAttention, padding masked) with a residual, then the
    masked mean beside the newest slot's attended state (as SASRec reads the last
    one). The history carries no timestamps, so positions stand for time.

    With ``dot_interactions`` every embedding (ids, categories, each sequence's
    pooled one) is ``embedding_dim`` wide and their pairwise dot products are added
    as features (DLRM's interaction, Naumov et al. 2019, tfrs' DotInteraction): the
    user-item, history-item and history-category affinities an MLP or cross layer
    would otherwise have to discover as products of its inputs."""

    def __init__(
        self,
        transform_output: tft.TFTransformOutput,
        registry: FeatureRegistry,
        tower: str,
        embedding_dim: int,
        hidden_units: list[int],
        output_dim: int | None,
        normalize: bool = False,
        history_affinity: bool = False,
        id_dropout: float = 0.0,
        sequence_encoder: str = "mean",
        max_sequence_length: int = 64,
        dot_interactions: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if sequence_encoder not in SEQUENCE_ENCODERS:
            raise ValueError(
                f"sequence_encoder must be one of {SEQUENCE_ENCODERS}, got {sequence_encoder!r}"
            )
        features = registry.select(tower=tower)
        id_features = [f for f in features if f.embedded]
        sequences = [f for f in features if f.transform == "sequence"]
        self.id_inputs = [f.transformed_name for f in id_features]
        self.sequence_inputs = [f.transformed_name for f in sequences]
        self.dense_inputs = [
            f.transformed_name for f in features if f not in id_features and f not in sequences
        ]
        self.dense_inputs += [cross.transformed_name for cross in registry.tower_crosses(tower)]

        def embedding(feature: Feature, name: str):
            cardinality = id_cardinality(transform_output, feature)
            # A small vocabulary needs no more dimensions than it has values, unless
            # its embedding is dotted with the others (which need one width).
            width = embedding_dim if dot_interactions else min(embedding_dim, cardinality)
            return tf.keras.layers.Embedding(cardinality, width, name=f"{name}_embedding")

        self.embeddings = [embedding(f, f.transformed_name) for f in id_features]
        # Per id input: the hashed buckets its ids are dropped to in training (first
        # index, count), where new ids land at serving: so each bucket is trained.
        self.dropout_to = [
            (id_cardinality(transform_output, f) - f.hash_buckets, f.hash_buckets)
            if f.group == "id" and id_dropout > 0
            else None
            for f in id_features
        ]
        self.id_dropout = id_dropout
        # For each sequence: the position of the id feature it is compared with, or None.
        names = [f.name for f in id_features]
        self.affinity_with = [
            names.index(f.of) if history_affinity and f.of in names else None for f in sequences
        ]
        self.sequence_embeddings = [
            self.embeddings[shared]
            if shared is not None
            else embedding(registry[f.of], f.transformed_name)
            for f, shared in zip(sequences, self.affinity_with, strict=True)
        ]
        # The vocabulary behind each embedding table (None: a category range), so a warm
        # start can match rows by token (recsys.core.warm_start).
        self.vocabulary_of = {
            id(table): f.name if f.transform == "vocabulary" else None
            for table, f in zip(self.embeddings, id_features, strict=True)
        }
        self.vocabulary_of.update(
            {
                id(table): f.of
                for table, f in zip(self.sequence_embeddings, sequences, strict=True)
                if id(table) not in self.vocabulary_of
            }
        )
        self.ordered = [
            (
                tf.keras.layers.Embedding(
                    max_sequence_length, table.output_dim, name=f"{name}_positions"
                ),
                tf.keras.layers.MultiHeadAttention(
                    num_heads=2, key_dim=max(table.output_dim // 2, 1), name=f"{name}_attention"
                ),
            )
            if sequence_encoder == "attention"
            else None
            for table, name in zip(self.sequence_embeddings, self.sequence_inputs, strict=True)
        ]
        self.interaction = (
            tfrs.layers.feature_interaction.DotInteraction(name="dot_interaction")
            if dot_interactions
            else None
        )
        layers = [tf.keras.layers.Dense(units, activation="relu") for units in hidden_units]
        if output_dim:
            layers.append(tf.keras.layers.Dense(output_dim))
        self.mlp = tf.keras.Sequential(layers) if layers else None
        self.normalize = normalize

    @NO_AUTOGRAPH
    def call(self, features, training=None):
        parts = []
        for embed, name, oov in zip(self.embeddings, self.id_inputs, self.dropout_to, strict=True):
            ids = tf.reshape(features[name], [-1])
            if training and oov is not None:
                first, buckets = oov
                dropped = tf.random.uniform(tf.shape(ids)) < self.id_dropout
                bucket = tf.cast(first, ids.dtype)
                if buckets > 1:
                    offset = tf.random.uniform(tf.shape(ids), 0, buckets, dtype=tf.int64)
                    bucket = bucket + tf.cast(offset, ids.dtype)
                ids = tf.where(dropped, bucket, ids)
            parts.append(embed(ids))
        vectors = list(parts)  # the embeddings, each [batch, embedding_dim] when dotted
        for embed, name, shared, ordered in zip(
            self.sequence_embeddings,
            self.sequence_inputs,
            self.affinity_with,
            self.ordered,
            strict=True,
        ):
            ids = sequence_ids(features[name])
            mask = ids != SEQUENCE_PADDING
            present = tf.cast(mask, tf.float32)[..., None]
            embedded = embed(tf.maximum(ids, 0))
            if ordered is not None:
                positions, attention = ordered
                slots = tf.minimum(tf.range(tf.shape(ids)[1]), positions.input_dim - 1)
                embedded = embedded + positions(slots)[None]
                pairs = tf.logical_and(mask[:, :, None], mask[:, None, :])
                embedded = embedded + attention(
                    embedded, embedded, attention_mask=pairs, training=training
                )
            summed = tf.reduce_sum(embedded * present, axis=1)
            mean = summed / tf.maximum(tf.reduce_sum(present, axis=1), 1.0)
            parts.append(mean)
            vectors.append(mean)
            if ordered is not None:
                # The newest slot's attended state too: a mean alone is blind to order.
                parts.append(embedded[:, 0, :] * present[:, 0, :])
            if shared is not None:
                parts.append(tf.reduce_sum(mean * parts[shared], axis=1, keepdims=True))
        if self.interaction is not None:
            parts.append(self.interaction(vectors))
        if self.dense_inputs:
            parts.append(
                tf.stack(
                    [
                        tf.cast(tf.reshape(features[name], [-1]), tf.float32)
                        for name in self.dense_inputs
                    ],
                    axis=1,
                )
            )
        output = tf.concat(parts, axis=1)
        if self.mlp is not None:
            output = self.mlp(output)
        return tf.math.l2_normalize(output, axis=1) if self.normalize else output


class RawInputModel(tf.keras.Model):
    """The transform graph followed by a model over transformed features."""

    def __init__(self, transform_output: tft.TFTransformOutput, model: tf.keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.tft_layer = transform_output.transform_features_layer()
        self.model = model

    @NO_AUTOGRAPH
    def call(self, raw_features, training=None):
        # Serving signatures take lists as dense [batch, length] tensors padded with
        # "" (TF Serving's Predict API has no sparse inputs); TFT wants them sparse.
        features = {
            name: tf.sparse.from_dense(value) if value.shape.rank == 2 else value
            for name, value in raw_features.items()
        }
        return self.model(self.tft_layer(features))


def raw_input_signature(
    transform_output: tft.TFTransformOutput, raw_features: list[str]
) -> dict[str, tf.TensorSpec]:
    """One tensor per raw feature: [batch] for single values, [batch, length]
    padded with "" for lists (the engagement history)."""
    spec = transform_output.raw_feature_spec()
    return {
        name: tf.TensorSpec(
            [None, None] if isinstance(spec[name], tf.io.VarLenFeature) else [None],
            spec[name].dtype,
            name=name,
        )
        for name in raw_features
    }


def raw_tensors(columns, signature: dict[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
    """``raw_arrays`` as tensors."""
    return {
        name: tf.constant(values, dtype=signature[name].dtype)
        for name, values in raw_arrays(columns, signature).items()
    }


def predict_in_batches(
    call, frame: pd.DataFrame, signature: dict[str, tf.TensorSpec], batch_size: int = 8192
) -> np.ndarray:
    """``call(raw tensors)`` over ``frame`` in slices of ``batch_size`` rows, concatenated."""
    parts = [
        np.asarray(call(raw_tensors(frame.iloc[i : i + batch_size], signature)))
        for i in range(0, len(frame), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros((0,))


def predict_transformed(
    model: tf.keras.Model, features: dict[str, np.ndarray], batch_size: int = 8192
) -> np.ndarray:
    """``model`` over transformed feature arrays, in batches, as one numpy array."""
    return np.concatenate(
        [model(batch, training=False).numpy() for batch in batched(features, batch_size)]
    )


def table_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """A transformed table's columns as arrays; id sequences padded to the longest."""
    arrays = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_list(column.type):
            arrays[name] = pad_lists(
                column.flatten().to_numpy(),
                column.value_lengths().fill_null(0).to_numpy(),
                SEQUENCE_PADDING,
            )
        else:
            arrays[name] = column.to_numpy()
    return arrays


def concat_arrays(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Row-wise concatenation of array dicts; sequences padded to the widest part."""
    out = {}
    for name in parts[0]:
        values = [part[name] for part in parts]
        if values[0].ndim == 2:
            width = max(v.shape[1] for v in values)
            values = [
                np.pad(v, ((0, 0), (0, width - v.shape[1])), constant_values=SEQUENCE_PADDING)
                for v in values
            ]
        out[name] = np.concatenate(values)
    return out


def load_transformed(
    directory: str, columns: list[str] | None = None, clicked_only: bool = False
) -> dict[str, np.ndarray]:
    """A small transformed dataset whole, as arrays (tests and benches; training
    streams, ``ExampleStream``). ``clicked_only`` keeps the positive rows."""
    label = [CLICKED] if clicked_only and columns is not None and CLICKED not in columns else []
    table = read_dataset_table(directory, columns and columns + label)
    if clicked_only:
        table = table.filter(pc.equal(table.column(CLICKED), 1)).drop(label)
    return table_arrays(table)


def batched(features: dict[str, np.ndarray], batch_size: int) -> tf.data.Dataset:
    """Unshuffled batches of arrays held in memory (a validation sample)."""
    return tf.data.Dataset.from_tensor_slices(features).batch(batch_size)


def steps_per_epoch(stream: "ExampleStream", batch_size: int, workers: int) -> int | None:
    """With several workers, the batches every worker can take in an epoch (they
    must all take the same number): the smallest share's selected rows over the
    per-worker batch. One worker takes the whole stream (None)."""
    if workers == 1:
        return None
    selected = []
    for worker in range(workers):
        rows = sum(t.num_rows for t in stream.tables(stream.shard(worker, workers)))
        selected.append(rows)
    steps = min(selected) // batch_size
    if steps == 0:
        raise ValueError(
            f"{workers} training workers with {batch_size} rows per worker batch leave a "
            f"worker with fewer rows than one batch ({min(selected)}): use fewer "
            "training_workers or a smaller batch_size"
        )
    return steps


@dataclass(frozen=True, order=True)
class Unit:
    """Rows ``[start, stop)`` of one row group of one Parquet file: what the stream
    reads at a time (a whole row group, or a worker's part of one)."""

    path: str
    group: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ExampleStream:
    """A transformed dataset (its Parquet shards) as a stream of training batches.

    Each epoch reads the row groups of this worker's share in an order drawn from
    ``seed`` and the epoch, keeps the rows the stream selects (the clicks, or every
    click and a ``negative_rate`` share of the rest, drawn per row group, so the
    same rows every epoch), shuffles them in a buffer of ``shuffle_buffer`` rows and
    cuts the buffer into batches. Memory is the buffer, whatever the dataset's size:
    what replaces holding the training set as arrays, and what lets several workers
    each read their own share (``shard``)."""

    directory: str
    columns: tuple[str, ...]
    clicked_only: bool = False
    negative_rate: float = 1.0
    seed: int = 0

    def units(self) -> list[Unit]:
        units = []
        for path in storage.glob(storage.join(self.directory, "*.parquet")):
            with storage.parquet_file(path) as parquet:
                metadata = parquet.metadata
                units += [
                    Unit(path, i, 0, metadata.row_group(i).num_rows)
                    for i in range(metadata.num_row_groups)
                ]
        return units

    def shard(self, worker: int = 0, workers: int = 1) -> list[Unit]:
        """Worker ``worker``'s share of the row groups: assigned largest first to the
        worker with the fewest rows, so shares differ by at most one row group. With
        fewer than two row groups per worker, each is first cut into one part per
        worker, so every worker has rows."""
        units = self.units()
        if workers == 1:
            return units
        if len(units) < 2 * workers:
            units = [
                Unit(
                    u.path,
                    u.group,
                    u.start + u.rows * i // workers,
                    u.start + u.rows * (i + 1) // workers,
                )
                for u in units
                for i in range(workers)
            ]
        loads = [0] * workers
        shares: list[list[Unit]] = [[] for _ in range(workers)]
        for unit in sorted(units, key=lambda u: (-u.rows, u.path, u.group, u.start)):
            least = loads.index(min(loads))
            shares[least].append(unit)
            loads[least] += unit.rows
        return sorted(shares[worker])

    def tables(self, units: list[Unit], order_seed: int | None = None):
        """The selected rows of ``units`` (in a seeded random order when
        ``order_seed`` is given), a row group at a time."""
        order = list(range(len(units)))
        if order_seed is not None:
            order = list(np.random.default_rng([self.seed, order_seed]).permutation(len(units)))
        columns = list(self.columns) + ([CLICKED] if CLICKED not in self.columns else [])
        with contextlib.ExitStack() as stack:
            files = {}
            for index in order:
                unit = units[index]
                if unit.path not in files:
                    files[unit.path] = stack.enter_context(storage.parquet_file(unit.path))
                table = files[unit.path].read_row_group(unit.group, columns=columns)
                clicked = table.column(CLICKED).to_numpy() == 1
                # Drawn for the whole row group, so a worker's part selects the same rows.
                if self.clicked_only:
                    keep = clicked
                elif self.negative_rate < 1.0:
                    draw = np.random.default_rng([self.seed, unit.group, _path_key(unit.path)])
                    keep = clicked | (draw.random(table.num_rows) < self.negative_rate)
                else:
                    keep = np.ones(table.num_rows, dtype=bool)
                keep = keep[unit.start : unit.stop]
                table = table.slice(unit.start, unit.rows)
                if not keep.all():
                    table = table.filter(pa.array(keep))
                yield table.select(list(self.columns))

    def scan(self, batch_rows: int = 65_536):
        """Every selected row once, in file order, as array dicts of up to
        ``batch_rows`` rows (counts, samples, validation)."""
        pending, count = [], 0
        for table in self.tables(self.units()):
            pending.append(table_arrays(table))
            count += table.num_rows
            if count >= batch_rows:
                yield concat_arrays(pending)
                pending, count = [], 0
        if count:
            yield concat_arrays(pending)

    def batches(
        self,
        batch_size: int,
        shuffle_buffer: int,
        epoch: int,
        worker: int = 0,
        workers: int = 1,
    ):
        """One epoch of shuffled batches of this worker's share (the last may be short)."""
        rng = np.random.default_rng([self.seed, epoch, worker, 1])
        pending, count = [], 0

        def drain(final: bool):
            buffer = concat_arrays(pending)
            n = len(next(iter(buffer.values())))
            order = rng.permutation(n)
            cut = n if final else n - n % batch_size
            for start in range(0, cut, batch_size):
                rows = order[start : min(start + batch_size, cut)]
                yield {name: values[rows] for name, values in buffer.items()}
            rest = order[cut:]
            return [{name: values[rest] for name, values in buffer.items()}] if len(rest) else []

        for table in self.tables(self.shard(worker, workers), order_seed=epoch):
            if table.num_rows == 0:
                continue
            pending.append(table_arrays(table))
            count += table.num_rows
            if count >= shuffle_buffer:
                pending = yield from drain(final=False)
                count = sum(len(next(iter(p.values()))) for p in pending)
        if count:
            yield from drain(final=True)

    def signature(self) -> dict[str, tf.TensorSpec]:
        """The tensors of a batch: [batch] per column, [batch, length] per sequence."""
        path = storage.glob(storage.join(self.directory, "*.parquet"))[0]
        schema = storage.parquet_schema(path)
        specs = {}
        for name in self.columns:
            kind = schema.field(name).type
            if pa.types.is_list(kind):
                specs[name] = tf.TensorSpec(
                    [None, None], tf.as_dtype(kind.value_type.to_pandas_dtype())
                )
            else:
                specs[name] = tf.TensorSpec([None], tf.as_dtype(kind.to_pandas_dtype()))
        return specs

    def dataset(
        self,
        batch_size: int,
        shuffle_buffer: int,
        worker: int = 0,
        workers: int = 1,
        extra=None,
    ) -> tf.data.Dataset:
        """The stream as a tf.data dataset: each iteration (Keras: each epoch) is the
        next epoch's shuffled batches; with several workers it repeats (Keras then
        takes a fixed number of steps per epoch from one iterator). ``extra(batch) ->
        dict`` adds columns (sample weights) to each batch and to the signature."""
        epochs = itertools.count()
        signature = self.signature()
        if extra is not None:
            probe = {
                name: np.zeros((1, 1) if spec.shape.rank == 2 else 1, spec.dtype.as_numpy_dtype)
                for name, spec in signature.items()
            }
            signature.update(
                {
                    name: tf.TensorSpec([None], tf.as_dtype(v.dtype))
                    for name, v in extra(probe).items()
                }
            )

        def generate():
            for batch in self.batches(batch_size, shuffle_buffer, next(epochs), worker, workers):
                if extra is not None:
                    batch.update(extra(batch))
                yield batch

        dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
        return (dataset.repeat() if workers > 1 else dataset).prefetch(tf.data.AUTOTUNE)

    def validation_steps(self, batch_size: int = 8192, workers: int = 1) -> int:
        """The batches ``validation`` yields on every worker (tf.distribute needs the
        count): the smallest share's."""
        return min(
            -(-sum(t.num_rows for t in self.tables(self.shard(w, workers))) // batch_size)
            for w in range(workers)
        )

    def validation(
        self, batch_size: int = 8192, worker: int = 0, workers: int = 1
    ) -> tf.data.Dataset:
        """This worker's share of the selected rows once, unshuffled, in batches
        (Keras' validation data)."""
        signature = self.signature()

        def generate():
            pending, count = [], 0
            for table in self.tables(self.shard(worker, workers)):
                pending.append(table_arrays(table))
                count += table.num_rows
                if count >= batch_size:
                    rows = concat_arrays(pending)
                    cut = count - count % batch_size
                    for start in range(0, cut, batch_size):
                        yield {name: v[start : start + batch_size] for name, v in rows.items()}
                    pending = [{name: v[cut:] for name, v in rows.items()}] if cut < count else []
                    count -= cut
            if count:
                yield concat_arrays(pending)

        return tf.data.Dataset.from_generator(generate, output_signature=signature)


def _path_key(path: str) -> int:
    """A stable number for a file path (seeds per row group)."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:4], "little")


def _reported(log_name: str) -> bool:
    # TFRS adds regularization_loss and total_loss (= loss without regularizers here).
    return "regularization" not in log_name and "total" not in log_name


def distributed(strategy, workers: int, make_dataset):
    """``make_dataset()`` as this worker's input: itself with one worker; with more,
    a distributed dataset whose per-worker dataset is ``make_dataset()`` (already
    this worker's share, so tf.distribute must not shard it again)."""
    if workers == 1:
        return make_dataset()
    return strategy.distribute_datasets_from_function(lambda context: make_dataset())


def fit(
    model: tf.keras.Model,
    train: tf.data.Dataset,
    validation: tf.data.Dataset,
    examples: int,
    epochs: int,
    stage: str,
    callbacks: list | None = None,
    steps_per_epoch: int | None = None,
    validation_steps: int | None = None,
) -> dict:
    """Train with per-epoch progress lines; return the final losses, throughput
    (``examples`` per epoch) and the per-epoch ``history``. ``callbacks`` run before
    the progress line."""
    started = time.monotonic()
    history = model.fit(
        train,
        validation_data=validation,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_steps=validation_steps,
        verbose=0,
        callbacks=[*(callbacks or []), logger := EpochLogger(stage)],
    )
    seconds = time.monotonic() - started
    epoch_seconds = logger.seconds
    final = {
        f"final_{'eval' if k.startswith('val_') else 'train'}_{k.removeprefix('val_')}": float(
            v[-1]
        )
        for k, v in history.history.items()
        if _reported(k)
    }
    epochs_run = len(next(iter(history.history.values())))
    # After the first epoch, which also traces the graph and (with several workers)
    # sets up the cluster: the rate that scales with the data.
    steady = sum(epoch_seconds[1:])
    return {
        **final,
        "train_seconds": round(seconds, 2),
        "examples_per_second": round(examples * epochs_run / seconds, 1),
        "steady_examples_per_second": round(examples * (epochs_run - 1) / steady, 1)
        if steady
        else float("nan"),
        "history": history.history,
    }


class EpochLogger(tf.keras.callbacks.Callback):
    """One progress line per epoch with the losses and metrics Keras reports."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage
        self.seconds: list[float] = []  # each epoch's, validation included

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.monotonic() - self._started)
        shown = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if _reported(k))
        log(self.stage, f"epoch {epoch + 1}/{self.params['epochs']}: {shown}")
