"""Warm start: initialise today's model from the last blessed one.

What a scheduled run needs from earlier runs is found under the pipeline root:
push keeps each blessed model's checkpoint in ``<pipeline_root>/blessed/<version>/
<model>/``, and a trainer with ``warm_start`` reads the newest one.

Ids come and go between runs (new users, new uploads), and each run's
tensorflow-transform vocabulary orders them anew, so an embedding row is copied by
its token, not by its position: the checkpoint keeps each table's vocabulary, and
rows are matched token by token; tokens new today keep their fresh
initialisation. Every other weight is copied when its shape is unchanged. A
different architecture (another number of weights, or a changed shape outside the
vocabulary dimension) refuses the warm start with the reason, and training
starts cold: a warm start is an optimisation, never a reason to fail a run.

Written by hand: Keras's ``warmstart_embedding_matrix`` remaps one table from
vocabulary files, but nothing restores a whole subclassed TFRS model across
vocabulary changes.
"""

import io
import json
import re

import numpy as np
import pandas as pd

from recsys.core import storage
from recsys.core.contracts import BLESSED_COMPLETE, BLESSED_DIR

# recsys.core.modeling (TensorFlow) is imported where weights are touched: push keeps
# checkpoints with ``keep_blessed`` and imports no TensorFlow.
WEIGHTS_FILE = "weights.npz"
LAYOUT_FILE = "layout.json"


def vocabularies(model) -> list[str | None]:
    """The vocabulary of each trainable weight (None: not an id embedding)."""
    from recsys.core import modeling

    tables = {}
    for layer in [model, *model.submodules]:
        if isinstance(layer, modeling.Tower):
            tables.update(layer.vocabulary_of)
    owner = {}
    for layer in model.submodules:
        if id(layer) in tables:
            for variable in layer.trainable_weights:
                owner[id(variable)] = tables[id(layer)]
    return [owner.get(id(variable)) for variable in model.trainable_weights]


def _tokens(transform_output, vocabulary: str) -> list[str]:
    return [
        token.decode() if isinstance(token, bytes) else str(token)
        for token in transform_output.vocabulary_by_name(vocabulary)
    ]


def save(model, transform_output, directory: str) -> str:
    """The trained weights and the vocabularies their embedding rows follow."""
    names = vocabularies(model)
    weights = io.BytesIO()
    np.savez(weights, *[variable.numpy() for variable in model.trainable_weights])
    storage.write_bytes(storage.join(directory, WEIGHTS_FILE), weights.getvalue())
    layout = {
        "weights": [
            {"shape": list(v.shape), "vocabulary": name}
            for v, name in zip(model.trainable_weights, names, strict=True)
        ],
        "vocabularies": {
            name: _tokens(transform_output, name) for name in sorted({n for n in names if n})
        },
    }
    storage.write_text(storage.join(directory, LAYOUT_FILE), json.dumps(layout))
    return directory


def restore(model, transform_output, directory: str) -> dict:
    """Copy the checkpoint in ``directory`` into ``model`` (its variables must exist).
    Returns what was done, or ``{"warm_start": False, "reason": ...}``."""
    layout = json.loads(storage.read_text(storage.join(directory, LAYOUT_FILE)))
    with np.load(io.BytesIO(storage.read_bytes(storage.join(directory, WEIGHTS_FILE)))) as stored:
        old = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    variables, names = model.trainable_weights, vocabularies(model)
    if len(old) != len(variables):
        return {
            "warm_start": False,
            "reason": f"the checkpoint has {len(old)} weights, the "
            f"model {len(variables)}: the architecture changed",
        }
    for variable, value, name in zip(variables, old, names, strict=True):
        same = tuple(variable.shape) == value.shape
        if not same and (not name or tuple(variable.shape)[1:] != value.shape[1:]):
            return {
                "warm_start": False,
                "reason": f"weight {variable.name} is "
                f"{tuple(variable.shape)} now, {value.shape} in the checkpoint",
            }
    report = {"warm_start": True, "weights": len(variables), "vocabularies": {}}
    rows = {}  # vocabulary -> (row in the checkpoint of each row now, -1: new token)
    for variable, value, name in zip(variables, old, names, strict=True):
        if not name or name in rows:
            continue
        now = _tokens(transform_output, name)
        before = layout["vocabularies"][name]
        # Rows past the vocabulary are the hashed buckets (new and rare ids): kept in
        # place when there are as many as before.
        buckets = variable.shape[0] - len(now)
        if value.shape[0] - len(before) != buckets:
            return {
                "warm_start": False,
                "reason": f"{name}'s hashed buckets changed from "
                f"{value.shape[0] - len(before)} to {buckets} (features.yaml hash_buckets)",
            }
        position = pd.Index(before).get_indexer(now)
        rows[name] = np.concatenate([position, np.arange(len(before), len(before) + buckets)])
        report["vocabularies"][name] = {
            "kept": int((position >= 0).sum()),
            "new": int((position < 0).sum()),
        }
    for variable, value, name in zip(variables, old, names, strict=True):
        if name is None:
            variable.assign(value)
            continue
        source = rows[name]
        fresh = variable.numpy()
        known = source >= 0
        fresh[known] = value[source[known]]
        variable.assign(fresh)
    return report


def latest_blessed(pipeline_root: str) -> tuple[int, str] | None:
    """(version, directory) of the newest complete blessed checkpoint under the
    pipeline root (one whose completion marker was written)."""
    if not pipeline_root:
        return None
    directory = storage.join(pipeline_root, BLESSED_DIR)
    versions = sorted(
        int(name)
        for name in storage.listdir(directory)
        if re.fullmatch(r"\d+", name)
        and storage.exists(storage.join(directory, name, BLESSED_COMPLETE))
    )
    return (versions[-1], storage.join(directory, str(versions[-1]))) if versions else None


def keep_blessed(pipeline_root: str, version: int, checkpoints: dict[str, str]) -> str:
    """Keep the checkpoints of a pushed version (model name -> directory) under the
    pipeline root, completely or not at all: the files first, then the completion
    marker, one object write, which is what makes the version visible (an object
    store has no rename)."""
    final = storage.join(pipeline_root, BLESSED_DIR, str(version))
    marker = storage.join(final, BLESSED_COMPLETE)
    if storage.exists(marker):
        return final
    storage.remove(final)  # what an interrupted copy left
    for name, source in checkpoints.items():
        storage.copy_dir(source, storage.join(final, name))
    storage.write_text(marker, "")
    return final


def warm_start_from(pipeline_root: str, model_name: str) -> tuple[int | None, str]:
    """The newest blessed checkpoint of ``model_name``: (version, directory), or
    (None, "") when there is none yet."""
    found = latest_blessed(pipeline_root)
    if found is None or not storage.isdir(storage.join(found[1], model_name)):
        return None, ""
    return found[0], storage.join(found[1], model_name)


def initialise(model, transform_output, directory: str, stage: str, build) -> dict:
    """Warm-start ``model`` from ``directory`` ("" = cold). ``build()`` creates the
    model's variables (one call on a few rows). Logs and returns what happened."""
    from recsys.core.progress import log

    if not directory:
        return {"warm_start": False}
    build()
    report = restore(model, transform_output, directory)
    if report["warm_start"]:
        kept = ", ".join(
            f"{name}: {v['kept']} rows kept, {v['new']} new"
            for name, v in sorted(report["vocabularies"].items())
        )
        log(stage, f"warm start from {directory}: {report['weights']} weights ({kept})")
    else:
        log(
            stage, f"warm start from {directory} refused, training from scratch: {report['reason']}"
        )
    return report
