"""Train the ranking model (TFRS, DCN-v2, two tasks) and export it.

The ranker scores the few hundred candidates retrieval returns for one request,
so unlike the retrieval towers it can look at the user and the item together:

- inputs: the registry's features for ``ranking``: embeddings of the user, item
  and context ids, the normalized (z-scored by tensorflow-transform) user, item
  and context statistics, and user x item features: the registry's crosses
  (whether the candidate is already in the user's history) and the dot product of
  the history's mean embedding with the candidate's embedding
  (``Tower(history_affinity=True)``); with ``dot_interactions`` (the default),
  the pairwise dot products of all those embeddings too (DLRM's interaction),
  which on the synthetic sample brought the funnel from 76% to 81% of the
  oracle's order (docs/benchmarks.md, "The ranker against the oracle");
- DCN-v2 (Wang et al., WWW 2021): ``cross_layers`` cross layers x_{l+1} =
  x0 * (W x_l + b) + x_l over those inputs (full-rank W, or low-rank with
  ``cross_projection_dim``), then a deep MLP;
- two heads: the click probability (logistic), and the expected watch time of a
  click (a Poisson head on watched minutes, fitted on clicked rows only; the
  Poisson loss makes the mean prediction unbiased for any watch-time
  distribution, where a regression on log time would predict a geometric mean);
- the served ``score`` combines them as the expected value of the impression:
  P(click) * (1 + score_watch_weight * E[watched minutes | click]).

Logs whose impressions are consumptions (``watched_from: impressions``: a ratings
log, where every row is an item the user chose, rated and then liked or not) hold
no impression the user passed over, so the click head learns P(like | consumed)
and knows nothing of which items a user consumes at all: it ranks an obscure
item the user would never pick as high as a popular one they would. A third
head, the consumption head, learns that from in-batch negatives: each row's user
and context with another row's item columns (the crosses recomputed), label "not
consumed" (``consumption_negatives`` per row). Negatives drawn like that follow
the items' frequency q(i) in the log, so its logit estimates log p(i | u) - log
q(i) - log(negatives) (the same correction as the retrieval's logQ); the model adds
log q(i) and log(negatives) back outside training, so the served score is
P(consumed next = i) * P(click | consumed) * (1 + ...). The click head, and what
the release gate checks of its calibration, are unchanged.

Negative downsampling: training keeps every click and a ``negative_sampling_rate``
share of the non-clicks, which multiplies the predicted odds by 1/rate. The model
undoes that outside training, q = p / (p + (1 - p) / rate), i.e. log(rate) added to
the logit, so evaluation and serving see calibrated probabilities.
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs
import tensorflow_transform as tft

from recsys.components.train_ranking.config import RankingConfig
from recsys.core import distributed, modeling, warm_start
from recsys.core.contracts import (
    CLICK_PROBABILITY,
    CLICKED,
    EXPECTED_WATCH_SECONDS,
    RANKER,
    SCORE,
    SIGNATURE,
    WATCH_SECONDS,
)
from recsys.core.features import FeatureRegistry, load_registry
from recsys.core.limits import SHUFFLE_BUFFER
from recsys.core.modeling import sequence_ids
from recsys.core.progress import log

# Bounds the watch head's log-rate so exp() cannot overflow early in training.
MAX_LOG_MINUTES = 10.0


def calibrate(probability, negative_sampling_rate: float):
    """The probability under the original class balance of a model trained with
    non-clicks kept at ``negative_sampling_rate``: q = p / (p + (1 - p) / rate)."""
    return probability / (probability + (1.0 - probability) / negative_sampling_rate)


class RankingModel(tfrs.Model):
    def __init__(
        self,
        transform_output: tft.TFTransformOutput,
        registry: FeatureRegistry,
        config: RankingConfig,
        watch_head: bool = True,
        global_batch: int | None = None,
        item_counts: np.ndarray | None = None,
    ):
        """``global_batch``: under a multi-worker strategy, the batch over all workers;
        each worker's losses are then sums over its share divided by it (what
        tf.distribute needs), which is the mean over the global batch, as one worker's
        mean loss is. ``item_counts``: each item index's training rows, given when
        the impressions are consumptions; it switches the consumption head on
        (with ``config.consumption_negatives`` > 0)."""
        super().__init__()
        self.encoder = modeling.Tower(
            transform_output,
            registry,
            RANKER,
            config.embedding_dim,
            hidden_units=[],
            output_dim=None,
            history_affinity=True,
            id_dropout=config.id_dropout,
            dot_interactions=config.dot_interactions,
            name="encoder",
        )
        self.cross = [
            tfrs.layers.dcn.Cross(
                projection_dim=config.cross_projection_dim or None,
                kernel_initializer="glorot_uniform",
            )
            for _ in range(config.cross_layers)
        ]
        self.deep = tf.keras.Sequential(
            [tf.keras.layers.Dense(units, activation="relu") for units in config.deep_units]
        )
        self.click_head = tf.keras.layers.Dense(1, name="click_logit")
        self.watch_head = tf.keras.layers.Dense(1, name="watch_log_minutes")
        reduction = (
            tf.keras.losses.Reduction.SUM if global_batch else tf.keras.losses.Reduction.AUTO
        )
        self.loss_scale = 1.0 / global_batch if global_batch else 1.0
        # Under a strategy Keras sums each worker's logged values, right for the losses
        # (each a share of the mean) and wrong for a metric already synchronized, so
        # the chief measures the AUC after training instead (``train``).
        self.click_task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=reduction),
            metrics=[] if global_batch else [tf.keras.metrics.AUC(name="auc", from_logits=True)],
        )
        self.watch_task = tfrs.tasks.Ranking(loss=tf.keras.losses.Poisson(reduction=reduction))
        self.logit_shift = math.log(config.negative_sampling_rate)
        self.watch_loss_weight = config.watch_loss_weight if watch_head else 0.0
        self.score_watch_weight = config.score_watch_weight if watch_head else 0.0
        self.consumption_negatives = config.consumption_negatives if item_counts is not None else 0
        if self.consumption_negatives:
            self.consumption_head = tf.keras.layers.Dense(1, name="consumption_logit")
            self.consumption_task = tfrs.tasks.Ranking(
                loss=tf.keras.losses.BinaryCrossentropy(from_logits=True, reduction=reduction)
            )
            # The consumption loss: 1 / (1 + negatives) of the mean over a batch's
            # (1 + negatives) x rows terms (the weighting the defaults were chosen
            # with). One worker's task takes that mean itself; under a strategy the
            # task sums and loss_scale divides by the global batch's rows only, so
            # the terms per row divide once more.
            terms = 1 + self.consumption_negatives
            self.consumption_scale = 1.0 / (terms * terms if global_batch else terms)
            # log q(i); an item never seen in training counts as half an occurrence.
            self.log_item_frequency = tf.constant(
                np.log(np.maximum(item_counts, 0.5) / max(item_counts.sum(), 1)), tf.float32
            )
            (self.item_index,) = [
                f.transformed_name for f in registry.select(tower=RANKER, group="id", entity="item")
            ]
            self.item_columns = [
                f.transformed_name for f in registry.select(tower=RANKER, entity="item")
            ]
            # The crosses of a user list with an item column (the item in the history),
            # recomputed for the negatives from the transformed indices.
            self.item_crosses = [
                (cross.name, *(registry[name].transformed_name for name in cross.inputs))
                for cross in registry.tower_crosses(RANKER)
                if registry[cross.inputs[1]].entity == "item"
            ]

    @modeling.NO_AUTOGRAPH
    def call(self, features, training=None):
        """{"click_logit": calibrated outside training, "watch_log_minutes": log of the
        expected watched minutes given a click}, each [batch, 1]; with the
        consumption head also its in-batch logit and "consumption_log_probability"."""
        x0 = self.encoder(features, training=training)
        x = x0
        for cross in self.cross:
            x = cross(x0, x)
        hidden = self.deep(x)
        logit = self.click_head(hidden)
        if not training:
            logit = logit + self.logit_shift
        outputs = {
            "click_logit": logit,
            "watch_log_minutes": tf.clip_by_value(
                self.watch_head(hidden), -MAX_LOG_MINUTES, MAX_LOG_MINUTES
            ),
        }
        if self.consumption_negatives:
            # The in-batch logit the loss reads, and log p(i | u) served: the sampling
            # undone.
            outputs["consumption_logit"] = logit = self.consumption_head(hidden)
            items = tf.reshape(features[self.item_index], [-1, 1])
            outputs["consumption_log_probability"] = (
                logit
                + tf.gather(self.log_item_frequency, items)
                + math.log(self.consumption_negatives)
            )
        return outputs

    def with_other_items(self, features: dict) -> dict:
        """``features`` with each row's item columns taken from another row of the
        batch (a random rotation, so no row keeps its own), the crosses recomputed."""
        rows = tf.shape(features[self.item_index])[0]
        shift = tf.random.uniform([], 1, tf.maximum(rows, 2), dtype=tf.int32)
        swapped = dict(features)
        for name in self.item_columns:
            swapped[name] = tf.roll(features[name], shift, axis=0)
        for name, history, item in self.item_crosses:
            ids = sequence_ids(swapped[history])
            candidate = tf.reshape(tf.cast(swapped[item], ids.dtype), [-1, 1])
            found = tf.cast(tf.reduce_any(tf.equal(ids, candidate), axis=1), features[name].dtype)
            swapped[name] = tf.reshape(found, tf.shape(features[name]))
        return swapped

    @modeling.NO_AUTOGRAPH
    def compute_loss(self, features, training=False):
        outputs = self(features, training=training)
        clicked = tf.reshape(tf.cast(features[CLICKED], tf.float32), [-1, 1])
        loss = self.click_task(labels=clicked, predictions=outputs["click_logit"])
        if self.watch_loss_weight:
            minutes = tf.reshape(tf.cast(features[WATCH_SECONDS], tf.float32), [-1, 1]) / 60.0
            loss += self.watch_loss_weight * self.watch_task(
                labels=minutes,
                predictions=tf.exp(outputs["watch_log_minutes"]),
                sample_weight=clicked,
            )
        if self.consumption_negatives:
            logits = [outputs["consumption_logit"]] + [
                self(self.with_other_items(features), training=training)["consumption_logit"]
                for _ in range(self.consumption_negatives)
            ]
            labels = [tf.ones_like(logits[0])] + [tf.zeros_like(x) for x in logits[1:]]
            loss += self.consumption_scale * self.consumption_task(
                labels=tf.concat(labels, 0), predictions=tf.concat(logits, 0)
            )
        return loss * self.loss_scale

    def serving_outputs(self, outputs: dict) -> dict:
        """The served tensors, each [batch]: calibrated click probability, expected
        watch seconds of a click (0 without a watch head) and the combined score."""
        probability = tf.sigmoid(tf.reshape(outputs["click_logit"], [-1]))
        minutes = tf.exp(tf.reshape(outputs["watch_log_minutes"], [-1]))
        if not self.watch_loss_weight:
            minutes = tf.zeros_like(minutes)
        score = probability * (1.0 + self.score_watch_weight * minutes)
        if self.consumption_negatives:
            log_probability = tf.reshape(outputs["consumption_log_probability"], [-1])
            consumed = tf.exp(tf.minimum(log_probability, 0.0))
            score = consumed * score
        return {
            CLICK_PROBABILITY: probability,
            EXPECTED_WATCH_SECONDS: minutes * 60.0,
            SCORE: score,
        }


def train(
    transformed_train: str,
    transformed_eval: str,
    transform_graph: str,
    config: RankingConfig,
    registry: FeatureRegistry | None = None,
    callbacks: list | None = None,
    warm_start_dir: str = "",
    shuffle_buffer: int = SHUFFLE_BUFFER,
    worker: int = 0,
    workers: int = 1,
    strategy=None,
    consumed_impressions: bool = False,
) -> tuple[RankingModel, dict]:
    """Train on ``transformed_train``, streamed from its shards
    (``modeling.ExampleStream``: every click and a ``negative_sampling_rate`` share
    of the other rows, shuffled in a buffer of ``shuffle_buffer`` rows);
    ``transformed_eval`` gives the per-epoch validation lines. ``callbacks`` are
    Keras callbacks (the benchmark's epoch selection). With ``warm_start_dir`` (a
    ``recsys.core.warm_start`` checkpoint), start from its weights. ``registry`` says
    which features the ranker takes (default: the packaged registry). ``worker`` of
    ``workers``: this process's share under ``strategy`` (``recsys.core.distributed``);
    the model returned is then a plain copy of the trained one.
    ``consumed_impressions``: the log's impressions are consumptions (the join's
    ``watched_from: impressions``), which adds the consumption head."""
    strategy = strategy or tf.distribute.get_strategy()
    registry = registry or load_registry()
    modeling.set_seed(config.seed)
    transform_output = tft.TFTransformOutput(transform_graph)
    columns = tuple(
        [f.transformed_name for f in registry.select(tower=RANKER)]
        + [cross.transformed_name for cross in registry.tower_crosses(RANKER)]
        + [CLICKED, WATCH_SECONDS]
    )
    train_rows = modeling.ExampleStream(
        transformed_train, columns, negative_rate=config.negative_sampling_rate, seed=config.seed
    )
    eval_rows = modeling.ExampleStream(transformed_eval, columns, seed=config.seed)
    kept = clicks = watched = 0
    sample = None
    consumption = consumed_impressions and config.consumption_negatives > 0
    item_index = registry.select(tower=RANKER, group="id", entity="item")[0]
    item_counts = np.zeros(modeling.id_cardinality(transform_output, item_index), np.int64)
    for part in train_rows.scan():
        clicked = part[CLICKED] == 1
        kept += len(clicked)
        clicks += int(clicked.sum())
        watched += int((part[WATCH_SECONDS][clicked] > 0).sum())
        if consumption:
            items = part[item_index.transformed_name]
            item_counts += np.bincount(items, minlength=len(item_counts))[: len(item_counts)]
        sample = sample or {name: values[:2] for name, values in part.items()}
    examples = sum(u.rows for u in train_rows.units())
    if not clicks or clicks == kept:
        raise ValueError(
            f"train_ranking: the {kept} training examples are all "
            f"{'clicked' if clicks else 'not clicked'}; a click model "
            "needs both. Check the clicked column of the events."
        )
    watch_head = config.watch_loss_weight > 0 and watched > 0
    if config.watch_loss_weight > 0 and not watch_head:
        log(
            "train_ranking",
            "no training click has watch time (e.g. MovieLens): the watch-time "
            "head is off and the score is the click probability",
        )

    def build(global_batch=config.batch_size if workers > 1 else None):
        return RankingModel(
            transform_output,
            registry,
            config,
            watch_head,
            global_batch,
            item_counts if consumption else None,
        )

    with strategy.scope():
        model = build()
        model.compile(optimizer=tf.keras.optimizers.Adam(config.learning_rate))
    warm = warm_start.initialise(
        model, transform_output, warm_start_dir, "train_ranking", lambda: model(sample)
    )
    per_worker = max(1, config.batch_size // workers)
    metrics = modeling.fit(
        model,
        modeling.distributed(
            strategy,
            workers,
            lambda: train_rows.dataset(per_worker, shuffle_buffer, worker, workers),
        ),
        modeling.distributed(
            strategy, workers, lambda: eval_rows.validation(per_worker, worker, workers)
        )
        if workers > 1
        else eval_rows.validation(),
        kept,
        config.epochs,
        "train_ranking",
        callbacks,
        steps_per_epoch=modeling.steps_per_epoch(train_rows, per_worker, workers),
        validation_steps=eval_rows.validation_steps(per_worker, workers) if workers > 1 else None,
    )
    metrics.pop("history")
    if workers > 1:
        model = distributed.plain_copy(model, lambda: build(None), lambda built: built(sample))
        model.compile()
        measured = model.evaluate(eval_rows.validation(), verbose=0, return_dict=True)
        metrics.update(final_eval_auc=measured["auc"], final_eval_loss=measured["loss"])
    return model, {
        "train_examples": examples,
        "train_examples_kept": kept,
        "train_clicks": clicks,
        "negative_sampling_rate": config.negative_sampling_rate,
        "watch_head": int(watch_head),
        "consumption_head": int(consumption),
        "warm_start": int(warm["warm_start"]),
        **metrics,
    }


def run(job: dict, worker: int = 0, workers: int = 1) -> dict:
    """The stage as a job (``recsys.core.distributed``): this worker trains its share;
    the chief also writes the warm-start checkpoint and exports. ``job``: the dataset
    and output paths, the config's fields, the schema directory, the warm-start
    checkpoint, the shuffle buffer and whether the impressions are consumptions."""
    strategy = distributed.strategy(workers)  # before any other TensorFlow work
    config = RankingConfig(**job["config"])
    registry = load_registry(job["schema_dir"])
    model, metrics = train(
        job["transformed_train"],
        job["transformed_eval"],
        job["transform_graph"],
        config,
        registry,
        warm_start_dir=job["warm_start_dir"],
        shuffle_buffer=job["shuffle_buffer"],
        worker=worker,
        workers=workers,
        strategy=strategy,
        consumed_impressions=job["consumed_impressions"],
    )
    if worker != 0:
        return metrics
    warm_start.save(model, tft.TFTransformOutput(job["transform_graph"]), job["checkpoint"])
    export(model, job["transform_graph"], job["ranking_model"], registry)
    metrics["training_workers"] = workers
    return metrics


def export(
    model: RankingModel,
    transform_graph: str,
    serving_model_dir: str,
    registry: FeatureRegistry | None = None,
) -> None:
    """SavedModel: the ranker's raw user, item and context features in; click
    probability, expected watch seconds and the combined score out."""
    registry = registry or load_registry()
    transform_output = tft.TFTransformOutput(transform_graph)
    raw_model = modeling.RawInputModel(transform_output, model)
    signature = modeling.raw_input_signature(transform_output, registry.inputs(RANKER))

    @tf.function(input_signature=[signature])
    def score(features):
        return model.serving_outputs(raw_model(features))

    tf.saved_model.save(raw_model, serving_model_dir, signatures={SIGNATURE: score})
