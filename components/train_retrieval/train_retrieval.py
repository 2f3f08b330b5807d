"""Train the two-tower retrieval model (TFRS) and export it for TF Serving.

Positives are clicked impressions. The loss is TFRS's in-batch softmax over
L2-normalised embeddings with a temperature. In-batch negatives are sampled in
proportion to popularity, which would teach the model to demote popular items;
the logQ correction (Yi et al., RecSys 2019) subtracts log(sampling probability)
from each logit, with probabilities from click counts over the training window.
Accidental hits (the positive item again as a negative in the batch) are removed.
"""

from dataclasses import dataclass

import recsys  # noqa: F401

import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tensorflow_transform as tft

from components.features import preprocessing
from recsys import modeling
from recsys.tables import read_dataset, write_dataset

QUERY_EMBEDDING_SIGNATURE_OUTPUT = "query_embedding"
SAMPLING_PROBABILITY = "sampling_probability"


@dataclass
class RetrievalConfig:
    embedding_dim: int = 32
    epochs: int = 5
    batch_size: int = 512
    learning_rate: float = 0.05
    temperature: float = 0.1
    top_k: int = 100
    logq_correction: bool = True
    seed: int = 42


class TwoTowerModel(tfrs.Model):
    def __init__(self, transform_output, config: RetrievalConfig):
        super().__init__()
        self.query_tower = modeling.Tower(transform_output, preprocessing.QUERY_FEATURES,
                                          config.embedding_dim, [64], config.embedding_dim,
                                          normalize=True, name="query_tower")
        self.candidate_tower = modeling.Tower(transform_output, preprocessing.CANDIDATE_FEATURES,
                                              config.embedding_dim, [64], config.embedding_dim,
                                              normalize=True, name="candidate_tower")
        self.task = tfrs.tasks.Retrieval(temperature=config.temperature,
                                         remove_accidental_hits=True)

    def compute_loss(self, features, training=False):
        return self.task(self.query_tower(features), self.candidate_tower(features),
                         candidate_sampling_probability=features.get(SAMPLING_PROBABILITY),
                         candidate_ids=features["item_id_idx"], compute_metrics=False)


def positives(directory: str, columns: list[str]) -> dict[str, np.ndarray]:
    data = modeling.load_transformed(directory, columns + [preprocessing.LABEL])
    clicked = data.pop(preprocessing.LABEL) == 1
    return {name: values[clicked] for name, values in data.items()}


def sampling_probability(item_index: np.ndarray) -> np.ndarray:
    """Each positive's item frequency among all positives: the chance that item
    shows up as an in-batch negative."""
    _, inverse, counts = np.unique(item_index, return_inverse=True, return_counts=True)
    return (counts[inverse] / len(item_index)).astype(np.float32)


def train(transformed_train: str, transformed_eval: str, transform_graph: str,
          config: RetrievalConfig) -> tuple[TwoTowerModel, dict]:
    modeling.set_seed(config.seed)
    transform_output = tft.TFTransformOutput(transform_graph)
    columns = [preprocessing.transformed_name(f)
               for f in preprocessing.QUERY_FEATURES + preprocessing.CANDIDATE_FEATURES]
    train_data = positives(transformed_train, columns)
    eval_data = positives(transformed_eval, columns)
    if config.logq_correction:
        train_data[SAMPLING_PROBABILITY] = sampling_probability(train_data["item_id_idx"])
    n_train = len(train_data[columns[0]])
    if n_train < config.batch_size:
        raise ValueError(f"train_retrieval: only {n_train} clicked training examples; "
                         f"need at least batch_size={config.batch_size}. Widen the window.")
    model = TwoTowerModel(transform_output, config)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(config.learning_rate))
    metrics = modeling.fit(model, train_data, eval_data, config.batch_size, config.epochs,
                           "train_retrieval")
    return model, {"train_positives": n_train, "eval_positives": len(eval_data[columns[0]]),
                   **metrics}


def export(model: TwoTowerModel, transform_graph: str, item_snapshot: str, config: RetrievalConfig,
           serving_model_dir: str, query_model_dir: str, item_embeddings_dir: str) -> dict:
    """Write the serving SavedModel (raw user features in, top-K ids and scores out,
    brute-force index, standard ops only), the query-tower SavedModel and the item
    embedding table."""
    transform_output = tft.TFTransformOutput(transform_graph)
    query_model = modeling.RawInputModel(transform_output, model.query_tower)
    candidate_model = modeling.RawInputModel(transform_output, model.candidate_tower)
    query_signature = modeling.raw_input_signature(transform_output, preprocessing.QUERY_FEATURES)
    candidate_signature = modeling.raw_input_signature(transform_output,
                                                       preprocessing.CANDIDATE_FEATURES)

    items = read_dataset(item_snapshot)
    item_embeddings = modeling.predict_in_batches(candidate_model, items, candidate_signature)
    item_ids = items["item_id"].astype(str).to_numpy()
    write_dataset(pa.table({
        "item_id": item_ids,
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(item_embeddings.astype(np.float32).ravel()), item_embeddings.shape[1]),
    }), item_embeddings_dir)

    k = min(config.top_k, len(item_ids))
    index = tfrs.layers.factorized_top_k.BruteForce(query_model, k=k)
    index.index(tf.constant(item_embeddings), identifiers=tf.constant(item_ids))

    @tf.function(input_signature=[query_signature])
    def recommend(features):
        scores, ids = index(features)
        return {"scores": scores, "item_ids": ids}

    tf.saved_model.save(index, serving_model_dir, signatures={"serving_default": recommend})

    @tf.function(input_signature=[query_signature])
    def embed_query(features):
        return {QUERY_EMBEDDING_SIGNATURE_OUTPUT: query_model(features)}

    tf.saved_model.save(query_model, query_model_dir, signatures={"serving_default": embed_query})
    return {"top_k": k, "indexed_items": len(item_ids)}
