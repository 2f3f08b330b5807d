"""Train the click ranking model (TFRS, deep & cross network) and export it.

It scores (user, item, context) triples; the SavedModel takes the raw features
through the transform graph and returns a click probability.
"""

from dataclasses import dataclass

import recsys  # noqa: F401

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tensorflow_transform as tft

from components.features import preprocessing
from recsys import modeling

RANKING_FEATURES = (preprocessing.QUERY_FEATURES + preprocessing.CANDIDATE_FEATURES
                    + preprocessing.ITEM_STATISTICS + preprocessing.CONTEXT_FEATURES)
PROBABILITY_OUTPUT = "click_probability"


@dataclass
class RankingConfig:
    embedding_dim: int = 16
    epochs: int = 3
    batch_size: int = 1024
    learning_rate: float = 0.002
    seed: int = 42


class ClickModel(tfrs.Model):
    def __init__(self, transform_output, config: RankingConfig):
        super().__init__()
        self.encoder = modeling.Tower(transform_output, RANKING_FEATURES, config.embedding_dim,
                                      hidden_units=[], output_dim=None, name="encoder")
        self.cross = tfrs.layers.dcn.Cross()
        self.deep = tf.keras.Sequential([
            tf.keras.layers.Dense(128, activation="relu"),
            tf.keras.layers.Dense(64, activation="relu"),
            tf.keras.layers.Dense(1, activation="sigmoid"),
        ])
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(),
            metrics=[tf.keras.metrics.AUC(name="auc")])

    @modeling.NO_AUTOGRAPH
    def call(self, features, training=None):
        x0 = self.encoder(features)
        return self.deep(self.cross(x0, x0))

    @modeling.NO_AUTOGRAPH
    def compute_loss(self, features, training=False):
        labels = tf.reshape(tf.cast(features[preprocessing.LABEL], tf.float32), [-1, 1])
        return self.task(labels=labels, predictions=self(features))


def train(transformed_train: str, transformed_eval: str, transform_graph: str,
          config: RankingConfig) -> tuple[ClickModel, dict]:
    modeling.set_seed(config.seed)
    transform_output = tft.TFTransformOutput(transform_graph)
    columns = [preprocessing.transformed_name(f) for f in RANKING_FEATURES] + [preprocessing.LABEL]
    train_data = modeling.load_transformed(transformed_train, columns)
    eval_data = modeling.load_transformed(transformed_eval, columns)
    model = ClickModel(transform_output, config)
    model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    metrics = modeling.fit(model, train_data, eval_data, config.batch_size, config.epochs,
                           "train_ranking")
    metrics.pop("history")
    return model, {"train_examples": len(train_data[preprocessing.LABEL]), **metrics}


def export(model: ClickModel, transform_graph: str, serving_model_dir: str) -> None:
    """SavedModel: raw user, item and context features in, click probability out."""
    transform_output = tft.TFTransformOutput(transform_graph)
    raw_model = modeling.RawInputModel(transform_output, model)
    signature = modeling.raw_input_signature(transform_output, RANKING_FEATURES)

    @tf.function(input_signature=[signature])
    def score(features):
        return {PROBABILITY_OUTPUT: tf.reshape(raw_model(features), [-1])}

    tf.saved_model.save(raw_model, serving_model_dir, signatures={"serving_default": score})
