"""The serving contract: which raw features each serving model takes, and how they
are encoded as its signature's inputs.

Both SavedModels take raw features (the transform graph is inside them). One value
per request for every feature, except lists (the engagement history): TF Serving's
Predict API has no sparse inputs, so a list is a ``[batch, length]`` string tensor
padded with "". Every caller of an exported model builds its inputs with
``raw_arrays``: evaluation, infra validation's warmup requests, the online funnel
and its TF Serving clients. No TensorFlow import: signatures are read through the
``TensorSpec`` objects callers already have.
"""

import numpy as np
import pandas as pd

from recsys.core.contracts import SERVING_INPUTS
from recsys.core.features import FeatureRegistry


def serving_contract(model: str, registry: FeatureRegistry) -> dict[str, tuple[str, int]]:
    """The inputs serving sends ``model``: name -> (dtype, rank); lists are rank 2."""
    return {
        name: (registry[name].dtype, 2 if registry[name].is_list else 1)
        for name in registry.inputs(SERVING_INPUTS[model])
    }


def pad_lists(flat: np.ndarray, lengths: np.ndarray, padding) -> np.ndarray:
    """Lists given as their concatenated values and lengths, as a [rows, longest]
    array filled with ``padding`` (at least one column)."""
    out = np.full(
        (len(lengths), max(int(lengths.max(initial=0)), 1)),
        padding,
        dtype=object if isinstance(padding, str) else flat.dtype,
    )
    out[np.arange(out.shape[1]) < lengths[:, None]] = flat
    return out


def raw_arrays(columns, signature: dict) -> dict[str, np.ndarray]:
    """The numpy arrays a raw-input signature (name -> TensorSpec) expects, from a
    DataFrame or a mapping of column name to array: lists padded to [rows, longest]
    with "", strings as str objects."""
    arrays = {}
    for name, spec in signature.items():
        values = (
            np.asarray(columns[name])
            if not isinstance(columns, pd.DataFrame)
            else columns[name].to_numpy()
        )
        text = spec.dtype.name == "string"
        if spec.shape.rank == 2 and values.ndim == 1:
            lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
            flat = np.concatenate(values) if lengths.sum() else np.zeros(0, object)
            values = pad_lists(flat, lengths, "" if text else 0)
        if text:
            values = values.astype(str).astype(object)
        else:
            values = values.astype(spec.dtype.as_numpy_dtype, copy=False)
        arrays[name] = values
    return arrays
