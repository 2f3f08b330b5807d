"""Keras/TFRS building blocks shared by the two trainers (and their warm start).

Both models train on tensorflow-transform outputs and are exported behind the
transform graph, so a SavedModel takes the raw features the registry lists for
its tower and nothing else (``recsys.core.requests`` encodes them).
"""

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
import tensorflow_transform as tft

from recsys.core.contracts import CLICKED
from recsys.core.features import OOV_BUCKETS, SEQUENCE_PADDING, Feature, FeatureRegistry
from recsys.core.progress import log
from recsys.core.requests import pad_lists, raw_arrays
from recsys.core.tables import read_dataset_table

# Our call methods have no data-dependent Python control flow. Without this,
# autograph transpiles Keras and TFRS internals on the first fit: ~20 s per model.
NO_AUTOGRAPH = tf.autograph.experimental.do_not_convert


def set_seed(seed: int) -> None:
    tf.keras.utils.set_random_seed(seed)


def id_cardinality(transform_output: tft.TFTransformOutput, feature: Feature) -> int:
    """Rows of ``feature``'s embedding table: its vocabulary and the out-of-vocabulary
    bucket, or its category range."""
    if feature.transform == "category":
        return feature.cardinality
    return transform_output.vocabulary_size_by_name(feature.name) + OOV_BUCKETS


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
    of the ids (group ``id``) in training with the out-of-vocabulary bucket."""

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
        **kwargs,
    ):
        super().__init__(**kwargs)
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
            return tf.keras.layers.Embedding(
                cardinality, min(embedding_dim, cardinality), name=f"{name}_embedding"
            )

        self.embeddings = [embedding(f, f.transformed_name) for f in id_features]
        # Per id input: the out-of-vocabulary index its ids are dropped to in training.
        self.dropout_to = [
            id_cardinality(transform_output, f) - OOV_BUCKETS
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
                dropped = tf.random.uniform(tf.shape(ids)) < self.id_dropout
                ids = tf.where(dropped, tf.cast(oov, ids.dtype), ids)
            parts.append(embed(ids))
        for embed, name, shared in zip(
            self.sequence_embeddings, self.sequence_inputs, self.affinity_with, strict=True
        ):
            ids = sequence_ids(features[name])
            present = tf.cast(ids != SEQUENCE_PADDING, tf.float32)[..., None]
            summed = tf.reduce_sum(embed(tf.maximum(ids, 0)) * present, axis=1)
            mean = summed / tf.maximum(tf.reduce_sum(present, axis=1), 1.0)
            parts.append(mean)
            if shared is not None:
                parts.append(tf.reduce_sum(mean * parts[shared], axis=1, keepdims=True))
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


def load_transformed(
    directory: str, columns: list[str] | None = None, clicked_only: bool = False
) -> dict[str, np.ndarray]:
    """Transformed columns as arrays; id sequences padded to the longest one.
    ``clicked_only`` keeps the positive rows, filtered before any conversion."""
    label = [CLICKED] if clicked_only and columns is not None and CLICKED not in columns else []
    table = read_dataset_table(directory, columns and columns + label)
    if clicked_only:
        table = table.filter(pc.equal(table.column(CLICKED), 1)).drop(label)
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


def batched(features: dict[str, np.ndarray], batch_size: int) -> tf.data.Dataset:
    """Unshuffled batches, for validation. Training passes the arrays straight to
    ``fit(..., shuffle=True)``: Keras shuffles indices and gathers whole batches,
    which is far faster than shuffling dict elements one by one in tf.data."""
    return tf.data.Dataset.from_tensor_slices(features).batch(batch_size)


def _reported(log_name: str) -> bool:
    # TFRS adds regularization_loss and total_loss (= loss without regularizers here).
    return "regularization" not in log_name and "total" not in log_name


def fit(
    model: tf.keras.Model,
    train_data: dict[str, np.ndarray],
    eval_data: dict[str, np.ndarray],
    batch_size: int,
    epochs: int,
    stage: str,
    callbacks: list | None = None,
) -> dict:
    """Train with per-epoch progress lines; return the final losses, throughput and
    the per-epoch ``history``. ``callbacks`` run before the progress line."""
    started = time.monotonic()
    history = model.fit(
        train_data,
        batch_size=batch_size,
        shuffle=True,
        validation_data=batched(eval_data, 8192),
        epochs=epochs,
        verbose=0,
        callbacks=[*(callbacks or []), EpochLogger(stage)],
    )
    seconds = time.monotonic() - started
    n_train = len(next(iter(train_data.values())))
    final = {
        f"final_{'eval' if k.startswith('val_') else 'train'}_{k.removeprefix('val_')}": float(
            v[-1]
        )
        for k, v in history.history.items()
        if _reported(k)
    }
    epochs_run = len(next(iter(history.history.values())))
    return {
        **final,
        "train_seconds": round(seconds, 2),
        "examples_per_second": round(n_train * epochs_run / seconds, 1),
        "history": history.history,
    }


class EpochLogger(tf.keras.callbacks.Callback):
    """One progress line per epoch with the losses and metrics Keras reports."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        shown = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if _reported(k))
        log(self.stage, f"epoch {epoch + 1}/{self.params['epochs']}: {shown}")
