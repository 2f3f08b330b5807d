"""The tensorflow-transform preprocessing_fn and the feature groups the models use.

Analyzed on the training split only; the resulting graph ships inside every
exported model, so serving applies exactly the training-time transformation.
"""

import tensorflow as tf
import tensorflow_transform as tft

# Raw feature groups (columns of the joined examples; see schemas/examples.schema.pbtxt).
# What is known about the user at request time: attributes, trailing statistics and
# the engagement history (point-in-time joined for training, looked up at serving).
QUERY_FEATURES = ["user_id", "country", "device", "user_impressions_7d", "user_clicks_7d",
                  "user_watch_seconds_7d", "user_features_missing", "user_history_items",
                  "user_history_count", "user_history_mean_watch_seconds"]
CONTEXT_FEATURES = ["hour_of_day", "day_of_week"]
# The retrieval query tower: the user plus the request's context.
QUERY_TOWER_FEATURES = QUERY_FEATURES + CONTEXT_FEATURES
# The candidate tower sees only item attributes that do not change over time, so the
# item index computed at export is exact whenever it is built and used, and evaluation
# cannot score items with statistics from its own eval window.
CANDIDATE_FEATURES = ["item_id", "category", "creator_id", "duration_s"]
# Time-varying item statistics: for the ranker, which scores at request time.
ITEM_STATISTICS = ["item_age_days", "item_impressions_7d", "item_clicks_7d", "item_ctr_7d",
                   "item_features_missing"]
# Derived in the transform graph from several raw features, so training and serving
# compute them identically: whether the candidate is already in the user's history.
# User x item features like this are what the ranker adds over the retrieval towers,
# which see the user and the item separately.
CROSS_FEATURES = ["history_has_item"]
LABEL = "clicked"
LABELS = ["clicked", "watch_seconds"]

VOCABULARY_FEATURES = ["user_id", "item_id", "country", "device", "category", "creator_id"]
# Lists of ids mapped with another feature's vocabulary: the history holds item ids.
SEQUENCE_FEATURES = {"user_history_items": "item_id"}
# Transformed sequences are padded with this index (vocabulary indices are >= 0).
SEQUENCE_PADDING = -1
OOV_BUCKETS = 1
# Counts are heavy-tailed: log1p before z-scoring keeps a few giants from dominating.
LOG_SCALED_FEATURES = ["user_impressions_7d", "user_clicks_7d", "user_watch_seconds_7d",
                       "item_impressions_7d", "item_clicks_7d", "duration_s",
                       "user_history_count", "user_history_mean_watch_seconds"]
SCALED_FEATURES = ["item_ctr_7d", "item_age_days"]
FLAG_FEATURES = ["user_features_missing", "item_features_missing"]


def transformed_name(raw_name: str) -> str:
    if raw_name in VOCABULARY_FEATURES or raw_name in SEQUENCE_FEATURES:
        return f"{raw_name}_idx"
    if raw_name in LOG_SCALED_FEATURES or raw_name in SCALED_FEATURES:
        return f"{raw_name}_z"
    return raw_name


def preprocessing_fn(inputs):
    outputs = {}
    vocabularies = {name: tft.vocabulary(inputs[name], vocab_filename=name)
                    for name in VOCABULARY_FEATURES}
    for name, vocabulary in vocabularies.items():
        outputs[transformed_name(name)] = tft.apply_vocabulary(
            inputs[name], vocabulary, num_oov_buckets=OOV_BUCKETS)
    for name, vocabulary_of in SEQUENCE_FEATURES.items():
        # Stays sparse (a list per row): the models pad it to the longest list in a batch.
        outputs[transformed_name(name)] = tft.apply_vocabulary(
            inputs[name], vocabularies[vocabulary_of], num_oov_buckets=OOV_BUCKETS)
    for name in LOG_SCALED_FEATURES:
        outputs[transformed_name(name)] = tft.scale_to_z_score(
            tf.math.log1p(tf.maximum(tf.cast(inputs[name], tf.float32), 0.0)))
    for name in SCALED_FEATURES:
        outputs[transformed_name(name)] = tft.scale_to_z_score(inputs[name])
    for name in FLAG_FEATURES:
        outputs[name] = tf.cast(inputs[name], tf.float32)
    for name in CONTEXT_FEATURES:
        outputs[name] = inputs[name]
    outputs["history_has_item"] = history_has_item(inputs["user_history_items"],
                                                   inputs["item_id"])
    for name in LABELS:
        outputs[name] = inputs[name]
    return outputs


def history_has_item(history: tf.SparseTensor, item_id: tf.Tensor) -> tf.Tensor:
    """1.0 where the row's item id occurs in the row's history list, else 0.0."""
    rows = history.indices[:, 0]
    matches = tf.cast(tf.equal(history.values, tf.gather(item_id, rows)), tf.float32)
    found = tf.math.unsorted_segment_sum(matches, rows, tf.shape(item_id, out_type=tf.int64)[0])
    return tf.minimum(found, 1.0)
