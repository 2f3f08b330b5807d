"""Keras/TFRS building blocks shared by the two trainers and by serving code.

Both models train on tensorflow-transform outputs and are exported behind the
transform graph, so a SavedModel takes the raw features listed in
``schemas/examples.schema.pbtxt`` and nothing else.
"""

import recsys  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

import time

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_transform as tft

from components.features import preprocessing
from recsys.progress import log
from recsys.tables import read_dataset

# Our call methods have no data-dependent Python control flow. Without this,
# autograph transpiles Keras and TFRS internals on the first fit: ~20 s per model.
NO_AUTOGRAPH = tf.autograph.experimental.do_not_convert

# Integer features with a fixed range, embedded like vocabularies.
FIXED_CARDINALITY = {"hour_of_day": 24, "day_of_week": 7}


def set_seed(seed: int) -> None:
    tf.keras.utils.set_random_seed(seed)


def id_cardinality(transform_output: tft.TFTransformOutput, raw_name: str) -> int:
    if raw_name in FIXED_CARDINALITY:
        return FIXED_CARDINALITY[raw_name]
    return transform_output.vocabulary_size_by_name(raw_name) + preprocessing.OOV_BUCKETS


class Tower(tf.keras.Model):
    """Embeddings of the id features plus the dense features, then an MLP."""

    def __init__(self, transform_output: tft.TFTransformOutput, raw_features: list[str],
                 embedding_dim: int, hidden_units: list[int], output_dim: int | None,
                 normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        id_features = [f for f in raw_features
                       if f in preprocessing.VOCABULARY_FEATURES or f in FIXED_CARDINALITY]
        self.id_inputs = [preprocessing.transformed_name(f) for f in id_features]
        self.dense_inputs = [preprocessing.transformed_name(f) for f in raw_features
                             if f not in id_features]
        self.embeddings = [
            tf.keras.layers.Embedding(id_cardinality(transform_output, raw),
                                      min(embedding_dim, id_cardinality(transform_output, raw)),
                                      name=f"{name}_embedding")
            for raw, name in zip(id_features, self.id_inputs)]
        layers = [tf.keras.layers.Dense(units, activation="relu") for units in hidden_units]
        if output_dim:
            layers.append(tf.keras.layers.Dense(output_dim))
        self.mlp = tf.keras.Sequential(layers) if layers else None
        self.normalize = normalize

    @NO_AUTOGRAPH
    def call(self, features, training=None):
        parts = [embed(tf.reshape(features[name], [-1]))
                 for embed, name in zip(self.embeddings, self.id_inputs)]
        if self.dense_inputs:
            parts.append(tf.stack([tf.cast(tf.reshape(features[name], [-1]), tf.float32)
                                   for name in self.dense_inputs], axis=1))
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
        return self.model(self.tft_layer(raw_features))


def raw_input_signature(transform_output: tft.TFTransformOutput,
                        raw_features: list[str]) -> dict[str, tf.TensorSpec]:
    spec = transform_output.raw_feature_spec()
    return {name: tf.TensorSpec([None], spec[name].dtype, name=name) for name in raw_features}


def raw_tensors(frame: pd.DataFrame, signature: dict[str, tf.TensorSpec]) -> dict[str, tf.Tensor]:
    """DataFrame columns as the tensors a raw-input signature expects."""
    tensors = {}
    for name, spec in signature.items():
        values = frame[name].to_numpy()
        if spec.dtype == tf.string:
            values = values.astype(str).astype(object)
        tensors[name] = tf.constant(values, dtype=spec.dtype)
    return tensors


def predict_in_batches(call, frame: pd.DataFrame, signature: dict[str, tf.TensorSpec],
                       batch_size: int = 8192) -> np.ndarray:
    """``call(raw tensors)`` over ``frame`` in slices of ``batch_size`` rows, concatenated."""
    parts = [np.asarray(call(raw_tensors(frame.iloc[i:i + batch_size], signature)))
             for i in range(0, len(frame), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0,))


def load_transformed(directory: str, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    frame = read_dataset(directory, columns)
    return {name: frame[name].to_numpy() for name in frame.columns}


def batched(features: dict[str, np.ndarray], batch_size: int) -> tf.data.Dataset:
    """Unshuffled batches, for validation. Training passes the arrays straight to
    ``fit(..., shuffle=True)``: Keras shuffles indices and gathers whole batches,
    which is far faster than shuffling dict elements one by one in tf.data."""
    return tf.data.Dataset.from_tensor_slices(features).batch(batch_size)


def _reported(log_name: str) -> bool:
    # TFRS adds regularization_loss and total_loss (= loss without regularizers here).
    return "regularization" not in log_name and "total" not in log_name


def fit(model: tf.keras.Model, train_data: dict[str, np.ndarray], eval_data: dict[str, np.ndarray],
        batch_size: int, epochs: int, stage: str) -> dict:
    """Train with per-epoch progress lines; return the final losses and throughput."""
    started = time.monotonic()
    history = model.fit(train_data, batch_size=batch_size, shuffle=True,
                        validation_data=batched(eval_data, 8192), epochs=epochs, verbose=0,
                        callbacks=[EpochLogger(stage)])
    seconds = time.monotonic() - started
    n_train = len(next(iter(train_data.values())))
    final = {f"final_{'eval' if k.startswith('val_') else 'train'}_{k.removeprefix('val_')}":
             float(v[-1]) for k, v in history.history.items() if _reported(k)}
    return {**final, "train_seconds": round(seconds, 2),
            "examples_per_second": round(n_train * epochs / seconds, 1)}


class EpochLogger(tf.keras.callbacks.Callback):
    """One progress line per epoch with the losses and metrics Keras reports."""

    def __init__(self, stage: str):
        super().__init__()
        self.stage = stage

    def on_epoch_end(self, epoch, logs=None):
        shown = ", ".join(f"{k}={v:.4f}" for k, v in (logs or {}).items() if _reported(k))
        log(self.stage, f"epoch {epoch + 1}/{self.params['epochs']}: {shown}")
