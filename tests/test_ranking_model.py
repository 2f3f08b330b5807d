"""The ranker's encoder: DLRM's dot interaction over its embeddings (``Tower``'s
``dot_interactions``, on by default for train_ranking)."""

import os

import numpy as np
import pandas as pd
import tensorflow_transform as tft

from recsys.components.train_ranking.config import RankingConfig
from recsys.core import modeling
from recsys.core.contracts import RANKER
from recsys.core.features import load_registry

REGISTRY = load_registry()


def _tower(transform_graph: str, dot_interactions: bool) -> modeling.Tower:
    return modeling.Tower(
        tft.TFTransformOutput(transform_graph),
        REGISTRY,
        RANKER,
        8,
        hidden_units=[],
        output_dim=None,
        history_affinity=True,
        dot_interactions=dot_interactions,
    )


def test_dot_interactions_add_each_pair_of_embeddings_dot_product(stages):
    """Every embedding is embedding_dim wide and the encoder's output gains one
    column per pair of them holding their dot product: here the user's id
    embedding with the candidate item's, looked up by hand."""
    paths = stages["paths"]
    plain, dotted = (_tower(paths["transform_graph"], on) for on in (False, True))
    columns = [f.transformed_name for f in REGISTRY.select(tower=RANKER)] + [
        cross.transformed_name for cross in REGISTRY.tower_crosses(RANKER)
    ]
    rows = modeling.load_transformed(paths["transformed_eval"], columns)
    batch = {name: values[:5] for name, values in rows.items()}
    plain_out, dotted_out = plain(batch).numpy(), dotted(batch).numpy()

    assert {table.output_dim for table in dotted.embeddings} == {8}
    vectors = len(dotted.embeddings) + len(dotted.sequence_embeddings)
    pairs = vectors * (vectors - 1) // 2
    # Wider embeddings where a vocabulary is small, and the pairs on top.
    widened = sum(8 - table.output_dim for table in plain.embeddings)
    assert dotted_out.shape[1] == plain_out.shape[1] + widened + pairs

    user = dotted.id_inputs.index(REGISTRY["user_id"].transformed_name)
    item = dotted.id_inputs.index(REGISTRY["item_id"].transformed_name)
    user_vectors = dotted.embeddings[user](batch[dotted.id_inputs[user]].reshape(-1)).numpy()
    item_vectors = dotted.embeddings[item](batch[dotted.id_inputs[item]].reshape(-1)).numpy()
    expected = np.einsum("ij,ij->i", user_vectors, item_vectors)
    # DotInteraction's order: pairs (i, j), i > j, row by row of the lower triangle.
    high, low = max(user, item), min(user, item)
    pair = high * (high - 1) // 2 + low
    start = sum(table.output_dim for table in dotted.embeddings) + 1 + 8  # ids, affinity, mean
    assert len(dotted.sequence_embeddings) == 1  # the history: its mean, then its affinity
    np.testing.assert_allclose(dotted_out[:, start + pair], expected, rtol=1e-5, atol=1e-6)
    assert RankingConfig().dot_interactions  # the ranker's default


def _ranker_inputs(path: str, rows: int | None = None) -> dict[str, np.ndarray]:
    columns = [f.transformed_name for f in REGISTRY.select(tower=RANKER)] + [
        cross.transformed_name for cross in REGISTRY.tower_crosses(RANKER)
    ]
    loaded = modeling.load_transformed(path, columns)
    return {name: values[:rows] for name, values in loaded.items()}


def test_consumption_negatives_take_another_rows_item_and_recompute_the_cross(stages):
    """A negative keeps its row's user and context, takes every item column from one
    other row of the batch (the same rotation for all of them) and says whether
    that item is in the row's history as the transform graph would."""
    from recsys.components.train_ranking.train_ranking import RankingModel

    paths = stages["paths"]
    batch = _ranker_inputs(paths["transformed_train"], 64)
    items = REGISTRY.select(tower=RANKER, entity="item")
    item_index = REGISTRY["item_id"].transformed_name
    # A row whose history holds another row's item, so the cross has a 1 to find.
    history = REGISTRY["user_history_items"].transformed_name
    batch[history] = batch[history].copy()
    batch[history][0, 0] = batch[item_index][1]
    model = RankingModel(
        tft.TFTransformOutput(paths["transform_graph"]),
        REGISTRY,
        RankingConfig(consumption_negatives=1),
        item_counts=np.ones(10, np.int64),
    )
    for _ in range(5):
        swapped = {
            name: np.asarray(values) for name, values in model.with_other_items(batch).items()
        }
        shift = next(
            s for s in range(1, 64) if (np.roll(batch[item_index], s) == swapped[item_index]).all()
        )
        for feature in items:
            name = feature.transformed_name
            np.testing.assert_array_equal(swapped[name], np.roll(batch[name], shift, axis=0))
        for name in set(batch) - {f.transformed_name for f in items} - {"history_has_item"}:
            np.testing.assert_array_equal(swapped[name], batch[name])
        in_history = [
            swapped[item_index].reshape(-1)[row] in set(batch[history][row].tolist())
            for row in range(64)
        ]
        np.testing.assert_array_equal(
            swapped["history_has_item"].reshape(-1), np.asarray(in_history, np.float32)
        )


def _chosen_by_country(source: str, target: str) -> None:
    """``source``'s transformed rows with each row's item columns replaced by those of
    a row whose item's category matches the user's country (category index mod 5 =
    country index; the tiny world has 5 countries): a log whose users choose from
    their own part of the catalog."""
    table = pd.read_parquet(source)
    rng = np.random.default_rng(0)
    country = table[REGISTRY["country"].transformed_name].to_numpy()
    category = table[REGISTRY["category"].transformed_name].to_numpy() % 5
    donors = np.empty(len(table), np.int64)
    for group in np.unique(country):
        mine = np.flatnonzero(country == group)
        donors[mine] = rng.choice(np.flatnonzero(category == group), len(mine))
    for feature in REGISTRY.select(tower=RANKER, entity="item"):
        name = feature.transformed_name
        table[name] = table[name].to_numpy()[donors]
    table["history_has_item"] = 0.0
    os.makedirs(target)
    table.to_parquet(os.path.join(target, "part-00000.parquet"))


def test_the_consumption_head_learns_what_users_choose(stages, tmp_path):
    """Trained on a log whose impressions are consumptions and whose users choose
    from their own part of the catalog, the consumption head scores held-out rows'
    own (user, item) pairs above the same rows with other rows' items; the served
    score is P(consumed) x P(click) x (1 + watch)."""
    import tensorflow as tf

    from recsys.components.train_ranking import train_ranking
    from recsys.core.contracts import CLICK_PROBABILITY, EXPECTED_WATCH_SECONDS, SCORE

    paths = stages["paths"]
    chosen = {split: str(tmp_path / split) for split in ("train", "eval")}
    for split, target in chosen.items():
        _chosen_by_country(paths[f"transformed_{split}"], target)
    config = RankingConfig(epochs=8, learning_rate=0.01, consumption_negatives=3)
    model, metrics = train_ranking.train(
        chosen["train"],
        chosen["eval"],
        paths["transform_graph"],
        config,
        REGISTRY,
        consumed_impressions=True,
    )
    assert metrics["consumption_head"] == 1
    batch = {name: tf.constant(v) for name, v in _ranker_inputs(chosen["eval"]).items()}
    own = model(batch)["consumption_logit"].numpy().reshape(-1)
    other = model(model.with_other_items(batch))["consumption_logit"].numpy().reshape(-1)
    # A swapped item is of the user's country about one time in five: a perfect
    # head wins about 4 in 5.
    assert (own > other).mean() > 0.75
    outputs = model(batch)
    served = {k: v.numpy() for k, v in model.serving_outputs(outputs).items()}
    log_probability = outputs["consumption_log_probability"].numpy().reshape(-1)
    np.testing.assert_allclose(
        served[SCORE],
        np.exp(np.minimum(log_probability, 0.0))
        * served[CLICK_PROBABILITY]
        * (1 + config.score_watch_weight * served[EXPECTED_WATCH_SECONDS] / 60.0),
        rtol=1e-4,
    )


def test_the_loss_is_the_same_on_one_worker_and_under_a_strategys_scaling(stages):
    """A worker's loss under a strategy is its sum over the global batch's rows (what
    tf.distribute needs); with the whole batch on one worker it must equal the
    single-worker loss, consumption head included."""
    import tensorflow as tf

    from recsys.components.train_ranking.train_ranking import RankingModel
    from recsys.core.contracts import CLICKED, WATCH_SECONDS

    paths = stages["paths"]
    columns = [f.transformed_name for f in REGISTRY.select(tower=RANKER)] + [
        cross.transformed_name for cross in REGISTRY.tower_crosses(RANKER)
    ]
    rows = modeling.load_transformed(paths["transformed_train"], [*columns, CLICKED, WATCH_SECONDS])
    batch = {name: tf.constant(values[:64]) for name, values in rows.items()}
    transform_output = tft.TFTransformOutput(paths["transform_graph"])
    config = RankingConfig(consumption_negatives=3)
    counts = np.ones(modeling.id_cardinality(transform_output, REGISTRY["item_id"]), np.int64)
    one, scaled = (
        RankingModel(transform_output, REGISTRY, config, global_batch=size, item_counts=counts)
        for size in (None, 64)
    )
    one(batch), scaled(batch)
    scaled.set_weights(one.get_weights())
    losses = []
    for model in (one, scaled):
        tf.random.set_seed(7)  # the same negatives for both
        losses.append(float(model.compute_loss(batch, training=False)))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)
