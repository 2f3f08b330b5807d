"""Every name that crosses a stage boundary, declared once.

Column names every table shares, the raw tables a user brings and the datasets
the stages pass on (each with the curated schema it is checked against), the
models and their serving signatures, and the file layout of the serving root and
of the pipeline root. Stages, serving code and the application import these
names; none of them spells one out again.

What a *feature* is for (its group, the models that use it, its transform and its
default) is the feature registry's business: ``recsys.core.features``.
"""

import os
from dataclasses import dataclass

# --- columns ---------------------------------------------------------------------------

EVENT_ID, EVENT_TS = "event_id", "event_ts"
USER_ID, ITEM_ID = "user_id", "item_id"
# The labels: whether the impression was clicked, and how long the item was watched.
CLICKED, WATCH_SECONDS = "clicked", "watch_seconds"
# Feature tables: a row is valid from FEATURE_TS on; CREATED_TS says when it was written.
FEATURE_TS, CREATED_TS = "feature_ts", "created_ts"
# Timestamp columns (any common encoding in raw data, int64 Unix seconds after ingest).
TIMESTAMP_SUFFIX = "_ts"
# Value of a text attribute nobody knows (a missing attribute, an unknown id).
UNKNOWN = "__unknown__"
# An item's length: a watch cannot be longer (ingest's watch_exceeds_duration rule).
ITEM_DURATION = "duration_s"
# Optional on impressions: the probability with which the logging policy showed the
# item (off-policy evaluation weighs each impression by its inverse).
PROPENSITY = "propensity"
# The exposure log (recsys serve --exposure-log): per shown item, its request, its
# position on the page and the experiment arm that served it.
REQUEST_ID, POSITION, ARM = "request_id", "position", "arm"

# --- raw tables and the datasets between stages ----------------------------------------

# TFDV environments of the examples schema: labels exist in training only.
TRAINING, SERVING = "TRAINING", "SERVING"


@dataclass(frozen=True)
class RawTable:
    """A table the user brings under ``data_root`` and the curated schema its rows
    are checked against (in ``environment``); rows repeating ``key`` are quarantined."""

    name: str
    schema: str
    environment: str | None = None
    key: str | None = None
    optional: bool = False


USERS, ITEMS, IMPRESSIONS = "users", "items", "impressions"
USER_FEATURES, ITEM_FEATURES, SERVING_LOG = "user_features", "item_features", "serving_log"
# In the order ingest checks them: events are checked against the users and items
# accepted before them.
RAW_TABLES = {
    table.name: table
    for table in (
        RawTable(USERS, "users", key=USER_ID),
        RawTable(ITEMS, "items", key=ITEM_ID),
        RawTable(IMPRESSIONS, "impressions", key=EVENT_ID),
        RawTable(USER_FEATURES, "user_features"),
        RawTable(ITEM_FEATURES, "item_features"),
        # What serving fed the models per impression: the examples in the SERVING environment.
        RawTable(SERVING_LOG, "examples", SERVING, key=EVENT_ID, optional=True),
    )
}

# Under a synthetic data root: the world the generator drew (recsys.core.ground_truth).
GROUND_TRUTH_DIR = "ground_truth"

# Datasets ingest writes (Dataset artifacts), each from the raw table of the same name
# but the events, which are split by time.
TRAIN_EVENTS, EVAL_EVENTS, QUARANTINE = "train_events", "eval_events", "quarantine"
INGESTED = {
    TRAIN_EVENTS: IMPRESSIONS,
    EVAL_EVENTS: IMPRESSIONS,
    USERS: USERS,
    ITEMS: ITEMS,
    USER_FEATURES: USER_FEATURES,
    ITEM_FEATURES: ITEM_FEATURES,
    SERVING_LOG: SERVING_LOG,
}
# Everything ingest writes: the datasets and the quarantined rows with their reasons.
INGEST_OUTPUTS = (*INGESTED, QUARANTINE)
# What the point-in-time join reads from ingest.
JOIN_INPUTS = [TRAIN_EVENTS, EVAL_EVENTS, USERS, ITEMS, USER_FEATURES, ITEM_FEATURES]
# Datasets the join writes: examples (one per event) and the serving snapshots.
TRAIN_EXAMPLES, EVAL_EXAMPLES = "train_examples", "eval_examples"
USER_SNAPSHOT, ITEM_SNAPSHOT = "user_snapshot", "item_snapshot"
# Items as of the start of the eval split, for the funnel evaluation.
EVAL_ITEM_SNAPSHOT = "eval_item_snapshot"
EXAMPLES_SCHEMA = "examples"
# Which curated schema (and environment) validate checks each dataset against.
DATASET_SCHEMAS = {
    **{
        name: (RAW_TABLES[table].schema, RAW_TABLES[table].environment)
        for name, table in INGESTED.items()
    },
    TRAIN_EXAMPLES: (EXAMPLES_SCHEMA, TRAINING),
    EVAL_EXAMPLES: (EXAMPLES_SCHEMA, TRAINING),
}
# The feature-table views the join looks up point in time, by the key they are joined on.
FEATURE_VIEWS = {USER_FEATURES: USER_ID, ITEM_FEATURES: ITEM_ID}
# Parquet schema metadata of a feature view ingest derived and stored as the rows
# where a value changes (``recsys.core.aggregates.view_changes``): each row holds
# until the next one of its key.
CHANGE_ROWS = {b"recsys.feature_view": b"change rows"}


def missing_flag(view: str) -> str:
    """The column that is 1 where view ``view`` had no row for the event."""
    return f"{view}_missing"


# --- models and their serving signatures -----------------------------------------------

RETRIEVAL, RANKING = "retrieval", "ranking"
MODELS = (RETRIEVAL, RANKING)
SIGNATURE = "serving_default"
# The towers and models that use features (the registry's ``models``). A serving
# model's inputs are the raw features of the tower it serves.
QUERY_TOWER, CANDIDATE_TOWER = "retrieval.query", "retrieval.candidate"
RANKER = "ranking"
TOWERS = (QUERY_TOWER, CANDIDATE_TOWER, RANKER)
SERVING_INPUTS = {RETRIEVAL: QUERY_TOWER, RANKING: RANKER}
# How a tower may encode an id sequence (the engagement history): a bag, or ordered.
SEQUENCE_ENCODERS = ("mean", "attention")
# Outputs of the retrieval model (top-K item ids and scores) and of the query model.
ITEM_IDS, SCORES = "item_ids", "scores"
QUERY_EMBEDDING = "query_embedding"
# Outputs of the ranking model.
CLICK_PROBABILITY, EXPECTED_WATCH_SECONDS, SCORE = (
    "click_probability",
    "expected_watch_seconds",
    "score",
)
# What each serving model returns: dtype, rank and the range a sane value lies in.
MODEL_OUTPUTS = {
    RETRIEVAL: {ITEM_IDS: {"dtype": "string", "rank": 2}, SCORES: {"dtype": "float32", "rank": 2}},
    RANKING: {
        CLICK_PROBABILITY: {"dtype": "float32", "rank": 1, "min": 0.0, "max": 1.0},
        EXPECTED_WATCH_SECONDS: {"dtype": "float32", "rank": 1, "min": 0.0},
        SCORE: {"dtype": "float32", "rank": 1, "min": 0.0},
    },
}

# --- the serving root (what TF Serving and the funnel read; push writes it) -------------

MODELS_CONFIG = "models.config"  # TF Serving's --model_config_file
RECORDS_DIR = "records"  # records/<version>.json: the push record
EVENTS_DIR = os.path.join(RECORDS_DIR, "events")  # every push, no-op, rollback, removal
SNAPSHOT_DIR = "feature_snapshot"  # feature_snapshot/<version>/: what the funnel looks up
# TF Serving replays this file (TFRecord PredictionLog) before serving a version.
WARMUP_FILE_NAME = "tf_serving_warmup_requests"
WARMUP_FILE = os.path.join("assets.extra", WARMUP_FILE_NAME)
# Inside feature_snapshot/<version>/: the tables, the rules, and the curated schemas with
# the feature registry (``schemas/``) the models were trained with.
SNAPSHOT_USERS, SNAPSHOT_ITEMS, SNAPSHOT_EMBEDDINGS = "users", "items", "item_embeddings"
# The query tower alone (a SavedModel): the service's retrieval over an item index.
SNAPSHOT_QUERY_MODEL = "query_model"
# Candidates from sources besides the two-tower (train_retrieval writes them, push ships
# them in the snapshot, the funnel merges them): a directory holding
#   popular.parquet          item_id, weight: the most clicked training items, most first
#   co_engagement.parquet    item_id, neighbor_id, weight: items clicked after one another
#   sources.json             the sources served, per-source list length, history looked up
SNAPSHOT_CANDIDATE_SOURCES = "candidate_sources"
POPULAR_FILE, CO_ENGAGEMENT_FILE, SOURCES_FILE = (
    "popular.parquet",
    "co_engagement.parquet",
    "sources.json",
)
NEIGHBOR_ID, WEIGHT = "neighbor_id", "weight"
# The candidate sources, in the order that breaks ties between them.
TWO_TOWER, CO_ENGAGEMENT, POPULAR = "two_tower", "co_engagement", "popular"
CANDIDATE_SOURCES = (TWO_TOWER, CO_ENGAGEMENT, POPULAR)
# The approximate item index train_retrieval may write beside the item embeddings.
ANN_INDEX_FILE = "ann_hnsw.faiss"
RERANK_FILE = "rerank.json"
# What the snapshot was computed as of, and the history length the join used (the
# service folds later engagements into the rows with them).
SNAPSHOT_META = "snapshot.json"
SNAPSHOT_AS_OF, SNAPSHOT_HISTORY_LENGTH = "as_of", "history_length"
# The user snapshot's column of what the watched rule keeps out of pages: every item
# the user engaged with in the join's horizon before as_of, newest first (not a model
# input); and, in snapshot.json, which events add to it online and how many it keeps.
WATCHED_ITEMS = "user_watched_items"
SNAPSHOT_WATCHED_FROM, SNAPSHOT_WATCHED_MAX = "watched_from", "watched_max_items"
WATCHED_MAX_ITEMS = 10_000  # the default cap (the join's watched_max_items)
SNAPSHOT_SCHEMAS = "schemas"
# The feature registry's file, beside the curated schemas.
FEATURES_FILE = "features.yaml"


def warmup_path(warmup_dir: str, model: str) -> str:
    """Where infra validation leaves ``model``'s warmup requests for push."""
    return os.path.join(warmup_dir, model, WARMUP_FILE_NAME)


# --- the blessing (evaluate writes it, push reads it) -----------------------------------

BLESSING_CHAMPION = "champion"  # what the candidate was compared with
# Inside it: the versions models.config served when evaluate ran, and whether the
# blessing depends on them (compare_with_champion): push re-checks them under its lease.
SERVED_WHEN_EVALUATED, COMPARED_WITH_CHAMPION = "served_when_evaluated", "compared"


# --- state kept under the pipeline root between runs -----------------------------------

STATISTICS_DIR = "statistics"  # statistics/span=<day>/: drift baselines (validate)
BLESSED_DIR = "blessed"  # blessed/<version>/<model>/: warm-start checkpoints (push)
BLESSED_COMPLETE = "_COMPLETE"  # blessed/<version>/_COMPLETE: written last, marks it whole
