"""Curated TFDV schemas, one ``<name>.schema.pbtxt`` per table.

They are reviewed like code: a change in the data that the schema does not
allow stops the pipeline at validate until the data or the schema is fixed.
"""

import os

SCHEMA_DIR = os.path.dirname(os.path.abspath(__file__))


def schema_path(name: str, schema_dir: str = "") -> str:
    path = os.path.join(schema_dir or SCHEMA_DIR, f"{name}.schema.pbtxt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"schema '{name}' not found: expected {path}")
    return path


def load_schema(name: str, schema_dir: str = ""):
    """A curated schema as a ``tensorflow_metadata`` Schema proto. Parsed directly, not
    with TFDV's loader, which would import TensorFlow into stages that need none."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    with open(schema_path(name, schema_dir)) as handle:
        return text_format.Parse(handle.read(), schema_pb2.Schema())
