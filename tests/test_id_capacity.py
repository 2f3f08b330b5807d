"""Id spaces larger than the model: past ``top_ids`` (features.yaml) ids share
``hash_buckets`` embedding rows, so the embedding table's size is set by the registry,
not by the log, and an id never seen in training lands in a bucket the ranker's id
dropout trained."""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import yaml

from recsys.components.features.transform import transform
from recsys.components.train_ranking import train_ranking as rk
from recsys.components.train_ranking.config import RankingConfig
from recsys.core import modeling
from recsys.core.contracts import FEATURES_FILE, USER_ID
from recsys.core.features import RegistryError, load_registry
from recsys.core.schemas import SCHEMA_DIR
from recsys.core.tables import read_dataset

TOP_IDS, BUCKETS = 40, 8


def capped_schemas(tmp_path, **user_id) -> str:
    schema_dir = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, schema_dir)
    path = schema_dir / FEATURES_FILE
    document = yaml.safe_load(path.read_text())
    document["features"][USER_ID].update(user_id)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return str(schema_dir)


def test_capacity_keys_are_checked(tmp_path):
    with pytest.raises(RegistryError, match="top_ids must be a positive integer"):
        load_registry(capped_schemas(tmp_path / "a", top_ids=0))
    schema_dir = tmp_path / "b"
    os.makedirs(schema_dir)
    shutil.copytree(SCHEMA_DIR, schema_dir / "schemas")
    path = schema_dir / "schemas" / FEATURES_FILE
    document = yaml.safe_load(path.read_text())
    document["features"]["duration_s"]["hash_buckets"] = 4
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(RegistryError, match="only a vocabulary feature has"):
        load_registry(str(schema_dir / "schemas"))


def test_ids_past_top_ids_share_hashed_buckets_that_dropout_trains(stages, tmp_path):
    paths = stages["paths"]
    schema_dir = capped_schemas(tmp_path, top_ids=TOP_IDS, hash_buckets=BUCKETS)
    registry = load_registry(schema_dir)
    out = {"train": str(tmp_path / "train"), "eval": str(tmp_path / "eval")}
    graph = str(tmp_path / "graph")
    transform(
        paths["train_examples"], paths["eval_examples"], schema_dir, graph, out, str(tmp_path / "t")
    )
    output = tft.TFTransformOutput(graph)
    assert output.vocabulary_size_by_name(USER_ID) == TOP_IDS  # the most frequent ids only
    assert modeling.id_cardinality(output, registry[USER_ID]) == TOP_IDS + BUCKETS
    users = read_dataset(out["train"], columns=["user_id_idx"])["user_id_idx"]
    assert users.between(0, TOP_IDS + BUCKETS - 1).all()
    assert (users >= TOP_IDS).mean() > 0.5  # the tiny data has far more users than 40

    config = RankingConfig(epochs=1, batch_size=512, id_dropout=0.2)
    model, _ = rk.train(out["train"], out["eval"], graph, config, registry)
    table = next(t for t in model.encoder.embeddings if t.name.startswith("user_id_idx"))
    assert table.input_dim == TOP_IDS + BUCKETS  # set by the registry, not the log
    # The same model before training (same seed), to see which rows training moved.
    columns = [f.transformed_name for f in registry.select(tower="ranking")]
    columns += [c.transformed_name for c in registry.tower_crosses("ranking")]
    first = next(modeling.ExampleStream(out["train"], tuple(columns)).scan())
    modeling.set_seed(config.seed)
    fresh = rk.RankingModel(output, registry, config)
    fresh({name: values[:2] for name, values in first.items()})
    initial = next(t for t in fresh.encoder.embeddings if t.name.startswith("user_id_idx"))
    # An id never seen in training hashes, as the exported graph does, into a row...
    vocabulary = tf.lookup.StaticVocabularyTable(
        tf.lookup.TextFileInitializer(
            output.vocabulary_file_by_name(USER_ID),
            tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
        ),
        BUCKETS,
    )
    index = int(vocabulary.lookup(tf.constant(["never-seen-user"])).numpy()[0])
    assert TOP_IDS <= index < TOP_IDS + BUCKETS
    # ...that training moved: a trained embedding, not its random start.
    moved = np.abs(table.embeddings.numpy()[index] - initial.embeddings.numpy()[index])
    assert moved.max() > 1e-3
