"""The curated TFDV schemas: one ``<name>.schema.pbtxt`` per raw table, and the
examples schema of what the models see.

They live in ``schemas/`` (or a ``schema_dir`` of your own, beside its
``features.yaml``) and are reviewed like code: a change in the data that a schema
does not allow stops the pipeline at validate until the data or the schema is
fixed. Parsed with protobuf directly, not TFDV's loader, which would import
TensorFlow into code that needs none (ingest, serving).
"""

import functools
import os

from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from recsys.core import storage

# The dtype of each schema feature type, as the models' signatures name it.
SCHEMA_DTYPES = {schema_pb2.BYTES: "string", schema_pb2.INT: "int64", schema_pb2.FLOAT: "float32"}
SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schemas")


def schema_path(name: str, schema_dir: str = "") -> str:
    path = storage.join(schema_dir or SCHEMA_DIR, f"{name}.schema.pbtxt")
    if not storage.isfile(path):
        raise FileNotFoundError(f"schema '{name}' not found: expected {path}")
    return path


def load_schema(name: str, schema_dir: str = "") -> schema_pb2.Schema:
    """A curated schema as a ``tensorflow_metadata`` Schema proto (a fresh copy)."""
    path = schema_path(name, schema_dir)
    schema = schema_pb2.Schema()
    schema.CopyFrom(_parsed(path, storage.version_token(path)))
    return schema


@functools.lru_cache(maxsize=32)  # callers ask per batch; parsing text protos is slow
def _parsed(path: str, version: int) -> schema_pb2.Schema:
    return text_format.Parse(storage.read_text(path), schema_pb2.Schema())


def is_list(feature: schema_pb2.Feature) -> bool:
    """A variable-length feature (a list per row), as opposed to one value per row."""
    return (
        not feature.HasField("shape")
        and feature.HasField("value_count")
        and feature.value_count.max != 1
    )


def required_columns(name: str, schema_dir: str = "", environment: str | None = None) -> list[str]:
    """The columns every row of schema ``name`` must have (presence 1.0), in schema order."""
    return [
        feature.name
        for feature in load_schema(name, schema_dir).feature
        if feature.presence.min_fraction >= 1.0
        and not (environment and environment in feature.not_in_environment)
    ]
