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
