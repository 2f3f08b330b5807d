"""The two-tower trainer: its sampling arithmetic, validation recall, weighting,
repeatability, early stopping, the query tower's inputs and the ANN index."""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_transform as tft
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.components.train_retrieval import train_retrieval as tr
from recsys.components.train_retrieval.config import RetrievalConfig
from recsys.core import modeling
from recsys.core.contracts import (
    ANN_INDEX_FILE,
    CANDIDATE_TOWER,
    CLICKED,
    ITEM_ID,
    QUERY_EMBEDDING,
    QUERY_TOWER,
    WATCH_SECONDS,
)
from recsys.core.features import load_registry
from recsys.core.tables import read_dataset, write_dataset

REGISTRY = load_registry()


def test_mixed_sampling_probability_is_each_items_share_of_the_negatives():
    """Monte Carlo: draw B in-batch negatives by click frequency and M uniformly,
    many times; each item's observed count must be proportional to the formula."""
    rng = np.random.default_rng(0)
    frequency = rng.dirichlet(np.full(20, 0.3)).astype(np.float32)  # skewed popularity
    batch, uniform, rounds = 64, 32, 20_000
    counts = np.zeros(20)
    for _ in range(rounds):
        counts += np.bincount(rng.choice(20, batch, p=frequency / frequency.sum()), minlength=20)
        counts += np.bincount(rng.integers(0, 20, uniform), minlength=20)
    formula = tr.mixed_sampling_probability(
        tf.constant(frequency), tf.range(20), uniform, batch, 20
    ).numpy()
    observed = counts / counts.sum()
    expected = formula / formula.sum()
    assert np.allclose(observed, expected, atol=0.002)
    # Without uniform draws it is the click frequency itself.
    assert np.allclose(
        tr.mixed_sampling_probability(frequency, np.arange(20), 0, batch, 20), frequency
    )


class FixedTowers:
    """A model stand-in whose towers look embeddings up by id."""

    def __init__(self, user_vectors, item_vectors):
        def tower(key, table):
            return lambda features, training=False: tf.gather(table, features[key])

        self.query_tower = tower(tr.USER_INDEX, tf.constant(user_vectors, tf.float32))
        self.candidate_tower = tower(tr.ITEM_INDEX, tf.constant(item_vectors, tf.float32))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 6))
def test_validation_recall_matches_brute_force(seed, k):
    rng = np.random.default_rng(seed)
    n_users, n_items, n_queries = 5, 12, 15
    user_vectors = rng.normal(size=(n_users, 4))
    item_vectors = rng.normal(size=(n_items + 3, 4))  # ids 12-14 are not in the corpus
    corpus = {tr.ITEM_INDEX: rng.permutation(n_items)}
    queries = {
        tr.USER_INDEX: rng.integers(0, n_users, n_queries),
        tr.ITEM_INDEX: rng.integers(0, n_items + 3, n_queries),
    }
    train_pairs = np.stack([rng.integers(0, n_users, 20), rng.integers(0, n_items, 20)], axis=1)
    callback = tr.ValidationRecall(queries, corpus, train_pairs, k)
    callback.model = FixedTowers(user_vectors, item_vectors)

    clicked = set(map(tuple, train_pairs))
    hits = []
    for user, target in zip(queries[tr.USER_INDEX], queries[tr.ITEM_INDEX], strict=True):
        if target >= n_items or (user, target) in clicked:
            continue  # cannot be a hit: outside the corpus, or masked
        scores = {
            item: float(
                np.float32(user_vectors[user]).astype(np.float32) @ np.float32(item_vectors[item])
            )
            for item in range(n_items)
            if (user, item) not in clicked
        }
        better = sum(score > scores[target] for score in scores.values())
        hits.append(better < k)
    recall = callback.recall()
    if hits:
        assert np.isclose(recall, np.mean(hits))
    else:
        assert np.isnan(recall)
    chunked = tr.SCORE_CHUNK_ELEMENTS
    try:
        tr.SCORE_CHUNK_ELEMENTS = 2 * n_items  # two query rows at a time
        assert np.isclose(callback.recall(), recall, equal_nan=True)
    finally:
        tr.SCORE_CHUNK_ELEMENTS = chunked


def test_watch_time_weights(tmp_path):
    """Weights from one pass over the positives average 1 over them, grow with watch
    time, count a click without watch time, and refuse data without any."""
    watch = np.array([0.0, 10.0, 100.0, 1000.0])
    write_dataset(
        pd.DataFrame({tr.ITEM_INDEX: [0, 1, 1, 2], CLICKED: 1, WATCH_SECONDS: watch}),
        str(tmp_path / "positives"),
    )
    stream = modeling.ExampleStream(
        str(tmp_path / "positives"), (tr.ITEM_INDEX, WATCH_SECONDS), clicked_only=True
    )
    positives = tr.count_positives(stream, 4, "watch_time")
    assert positives.count == 4
    np.testing.assert_allclose(positives.item_frequency, [0.25, 0.5, 0.25, 0.0])
    weights = tr.positive_weights(watch, positives.mean_weight)
    assert np.isclose(weights.mean(), 1.0)
    assert np.all(np.diff(weights) > 0) and weights[0] > 0  # no watch time still counts
    assert tr.count_positives(stream, 4, "none").mean_weight is None
    write_dataset(
        pd.DataFrame({tr.ITEM_INDEX: [0, 1], CLICKED: 1, WATCH_SECONDS: 0.0}),
        str(tmp_path / "unwatched"),
    )
    unwatched = modeling.ExampleStream(
        str(tmp_path / "unwatched"), (tr.ITEM_INDEX, WATCH_SECONDS), clicked_only=True
    )
    with pytest.raises(ValueError, match="every clicked training example has watch_seconds 0"):
        tr.count_positives(unwatched, 4, "watch_time")


def test_config_errors_name_the_allowed_values():
    with pytest.raises(ValueError, match="positive_weighting must be one of"):
        RetrievalConfig(positive_weighting="dwell")
    with pytest.raises(ValueError, match="ann_index must be one of"):
        RetrievalConfig(ann_index="scann")


def _train(stages, **overrides):
    paths = stages["paths"]
    config = RetrievalConfig(
        **{**dict(epochs=1, batch_size=256, top_k=20, early_stopping_patience=0), **overrides}
    )
    return tr.train(
        paths["transformed_train"], paths["transformed_eval"], paths["transform_graph"], config
    )


def _item_embeddings(model, stages):
    rows = modeling.load_transformed(
        stages["paths"]["transformed_train"], tr.tower_columns(REGISTRY, CANDIDATE_TOWER)
    )
    return modeling.predict_transformed(model.candidate_tower, tr.corpus_table(REGISTRY, rows))


def test_training_is_repeatable_for_a_seed(stages):
    first, _ = _train(stages, seed=7)
    again, _ = _train(stages, seed=7)
    other, _ = _train(stages, seed=8)
    assert np.array_equal(_item_embeddings(first, stages), _item_embeddings(again, stages))
    assert not np.allclose(_item_embeddings(first, stages), _item_embeddings(other, stages))


def test_early_stopping_keeps_the_best_epoch(stages):
    _, metrics = _train(stages, epochs=6, early_stopping_patience=1, learning_rate=0.5)
    assert metrics["epochs_run"] <= 6
    # Whatever epoch stopped training, the model returned is the best one seen.
    assert np.isclose(metrics["val_recall_at_50"], metrics["best_val_recall_at_50"])


def test_mixed_negatives_join_the_softmax(stages):
    """One training step's softmax: B in-batch candidates plus M drawn from the
    corpus, each corrected by its mixed sampling probability."""
    paths = stages["paths"]
    transform_output = tft.TFTransformOutput(paths["transform_graph"])
    columns = tr.tower_columns(REGISTRY, QUERY_TOWER, CANDIDATE_TOWER)
    rows = modeling.load_transformed(paths["transformed_train"], columns)
    corpus = tr.corpus_table(REGISTRY, rows)
    positives = modeling.ExampleStream(
        paths["transformed_train"], (tr.ITEM_INDEX,), clicked_only=True
    )
    vocabulary = modeling.id_cardinality(transform_output, REGISTRY[ITEM_ID])
    frequency = tr.count_positives(positives, vocabulary, "none").item_frequency
    config = RetrievalConfig(batch_size=32, uniform_negatives=16)
    model = tr.TwoTowerModel(transform_output, REGISTRY, config, corpus, frequency)
    seen = {}

    def record(queries, candidates, candidate_sampling_probability, candidate_ids, **_):
        seen.update(
            queries=queries,
            candidates=candidates,
            ids=candidate_ids.numpy(),
            probability=candidate_sampling_probability.numpy(),
        )
        return tf.constant(0.0)

    model.task = record
    batch = {name: values[:32] for name, values in rows.items()}
    model.compute_loss(batch, training=True)
    assert seen["queries"].shape[0] == 32 and seen["candidates"].shape[0] == 32 + 16
    assert np.array_equal(seen["ids"][:32], batch[tr.ITEM_INDEX])
    assert np.isin(seen["ids"][32:], corpus[tr.ITEM_INDEX]).all()
    assert np.allclose(
        seen["probability"], frequency[seen["ids"]] + 16 / (32 * len(corpus[tr.ITEM_INDEX]))
    )
    model.compute_loss(batch, training=False)  # validation loss: in-batch only
    assert seen["candidates"].shape[0] == 32


def test_query_tower_reads_history_and_context(stages):
    serve = tf.saved_model.load(stages["paths"]["query_model"]).signatures["serving_default"]
    user = read_dataset(stages["paths"]["user_snapshot"])
    user = user[user["user_history_count"] > 2].head(1)
    request = user.assign(hour_of_day=20, day_of_week=4)

    def embed(frame):
        tensors = modeling.raw_tensors(frame, serve.structured_input_signature[1])
        return serve(**tensors)[QUERY_EMBEDDING].numpy()

    base = embed(request)
    assert np.array_equal(base, embed(request.copy()))
    other_history = request.assign(
        user_history_items=[list(user["user_history_items"].iloc[0])[:1]]
    )
    assert not np.allclose(base, embed(other_history))
    assert not np.allclose(base, embed(request.assign(hour_of_day=3)))


def test_ann_index_recall_against_exact_search(tmp_path):
    import faiss

    rng = np.random.default_rng(0)
    items = rng.normal(size=(3000, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = rng.normal(size=(200, 16)).astype(np.float32)
    path = str(tmp_path / "index.faiss")
    result = tr.write_ann_index(items, queries, 50, path)
    _, found = faiss.read_index(path).search(queries, 50)
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :50]
    by_hand = np.mean([len(set(f) & set(e)) / 50 for f, e in zip(found, exact, strict=True)])
    assert np.isclose(result["ann_recall_at_50_vs_exact"], by_hand)
    assert by_hand > 0.9
    assert tr.recall_vs_exact(np.array([[1, 2, -1]]), np.array([[2, 3, 4]])) == pytest.approx(1 / 3)


def test_export_writes_the_ann_index_beside_the_embeddings(stages, tmp_path):
    model, _ = _train(stages)
    paths = stages["paths"]
    config = RetrievalConfig(top_k=20, ann_index="faiss-hnsw")
    out = {name: str(tmp_path / name) for name in ("retrieval", "query", "embeddings")}
    exported = tr.export(
        model,
        paths["transform_graph"],
        paths["item_snapshot"],
        config,
        out["retrieval"],
        out["query"],
        out["embeddings"],
        paths["transformed_eval"],
    )
    assert (tmp_path / "embeddings" / ANN_INDEX_FILE).is_file()
    assert 0.9 <= exported["ann_recall_at_20_vs_exact"] <= 1.0
    table = read_dataset(out["embeddings"])
    assert len(table) == exported["indexed_items"] == len(read_dataset(paths["item_snapshot"]))
    assert pd.Series(table["item_id"]).is_unique


@pytest.mark.trains
def test_the_attention_encoder_reads_the_history_in_order_and_exports(stages, tmp_path):
    """history_encoder: attention: the query embedding depends on the history's order
    (a bag does not), and the exported query model serves it from raw features."""
    model, _ = _train(stages, history_encoder="attention", embedding_dim=16)
    paths = stages["paths"]
    out = {name: str(tmp_path / name) for name in ("retrieval", "query", "embeddings")}
    tr.export(
        model,
        paths["transform_graph"],
        paths["item_snapshot"],
        RetrievalConfig(top_k=20, embedding_dim=16),
        out["retrieval"],
        out["query"],
        out["embeddings"],
    )
    serve = tf.saved_model.load(out["query"]).signatures["serving_default"]
    user = read_dataset(paths["user_snapshot"])
    user = user[user["user_history_count"] > 3].head(1).assign(hour_of_day=20, day_of_week=4)
    history = list(user["user_history_items"].iloc[0])
    assert len(set(history)) > 2

    def embed(items):
        frame = user.assign(user_history_items=[items])
        return serve(**modeling.raw_tensors(frame, serve.structured_input_signature[1]))[
            QUERY_EMBEDDING
        ].numpy()

    assert not np.allclose(embed(history), embed(history[::-1]), atol=1e-5)
    assert np.all(np.isfinite(embed([])))  # a user without a history: no NaN
    bag, _ = _train(stages, embedding_dim=16)  # the mean encoder ignores order
    rows = modeling.load_transformed(
        paths["transformed_eval"], tr.tower_columns(REGISTRY, QUERY_TOWER)
    )
    one = {name: values[:1] for name, values in rows.items()}
    history_input = REGISTRY["user_history_items"].transformed_name
    flipped = {**one, history_input: one[history_input][:, ::-1]}
    np.testing.assert_allclose(
        bag.query_tower(one).numpy(), bag.query_tower(flipped).numpy(), atol=1e-5
    )
