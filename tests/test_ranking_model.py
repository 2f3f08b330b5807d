"""The ranker's encoder: DLRM's dot interaction over its embeddings (``Tower``'s
``dot_interactions``, on by default for train_ranking)."""

import numpy as np
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
