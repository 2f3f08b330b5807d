"""The tensorflow-transform preprocessing_fn and the feature groups the models use.

Analyzed on the training split only; the resulting graph ships inside every
exported model, so serving applies exactly the training-time transformation.
"""

import tensorflow as tf
import tensorflow_transform as tft

# Raw feature groups (columns of the joined examples; see schemas/examples.schema.pbtxt).
QUERY_FEATURES = ["user_id", "country", "device", "user_impressions_7d", "user_clicks_7d",
                  "user_watch_seconds_7d", "user_features_missing"]
CANDIDATE_FEATURES = ["item_id", "category", "creator_id", "duration_s", "item_age_days",
                      "item_impressions_7d", "item_clicks_7d", "item_ctr_7d",
                      "item_features_missing"]
CONTEXT_FEATURES = ["hour_of_day", "day_of_week"]
LABEL = "clicked"
LABELS = ["clicked", "watch_seconds"]

VOCABULARY_FEATURES = ["user_id", "item_id", "country", "device", "category", "creator_id"]
OOV_BUCKETS = 1
# Counts are heavy-tailed: log1p before z-scoring keeps a few giants from dominating.
LOG_SCALED_FEATURES = ["user_impressions_7d", "user_clicks_7d", "user_watch_seconds_7d",
                       "item_impressions_7d", "item_clicks_7d", "duration_s"]
SCALED_FEATURES = ["item_ctr_7d", "item_age_days"]
FLAG_FEATURES = ["user_features_missing", "item_features_missing"]


def transformed_name(raw_name: str) -> str:
    if raw_name in VOCABULARY_FEATURES:
        return f"{raw_name}_idx"
    if raw_name in LOG_SCALED_FEATURES or raw_name in SCALED_FEATURES:
        return f"{raw_name}_z"
    return raw_name


def preprocessing_fn(inputs):
    outputs = {}
    for name in VOCABULARY_FEATURES:
        outputs[transformed_name(name)] = tft.compute_and_apply_vocabulary(
            inputs[name], num_oov_buckets=OOV_BUCKETS, vocab_filename=name)
    for name in LOG_SCALED_FEATURES:
        outputs[transformed_name(name)] = tft.scale_to_z_score(
            tf.math.log1p(tf.maximum(inputs[name], 0.0)))
    for name in SCALED_FEATURES:
        outputs[transformed_name(name)] = tft.scale_to_z_score(inputs[name])
    for name in FLAG_FEATURES:
        outputs[name] = tf.cast(inputs[name], tf.float32)
    for name in CONTEXT_FEATURES:
        outputs[name] = inputs[name]
    for name in LABELS:
        outputs[name] = inputs[name]
    return outputs
