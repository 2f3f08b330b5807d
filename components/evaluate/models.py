"""Calling exported SavedModels over evaluation frames, as their serving signature."""

import functools

import numpy as np
import pandas as pd
import tensorflow as tf

from recsys.core import modeling
from recsys.core.contracts import SIGNATURE


@functools.lru_cache(maxsize=8)
def serving_fn(saved_model_dir: str):
    """A SavedModel's serving signature, loaded once per path in this process."""
    return tf.saved_model.load(saved_model_dir).signatures[SIGNATURE]


def call_in_batches(fn, frame: pd.DataFrame, output: str) -> np.ndarray:
    """One output of a serving signature over ``frame``."""
    return modeling.predict_in_batches(
        lambda tensors: fn(**tensors)[output], frame, fn.structured_input_signature[1]
    )


def outputs_in_batches(fn, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every output of a serving signature over ``frame``."""
    names = sorted(fn.structured_outputs)
    stacked = modeling.predict_in_batches(
        lambda tensors: np.stack([fn(**tensors)[name].numpy() for name in names], axis=1),
        frame,
        fn.structured_input_signature[1],
    )
    return {name: stacked[:, i] for i, name in enumerate(names)}
