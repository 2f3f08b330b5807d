"""`recsys schema infer` and `recsys schema diff`: curation as a reviewable diff.

`infer` computes TFDV statistics of raw tables and proposes one schema per table
(TFDV's inference plus a lower bound of 0 on numeric columns without negative
values; no upper bound, since the data is a sample), and the examples schema with
the feature registry beside them, so the directory is a ``schema_dir`` as written:
the packaged examples schema with the domains of the columns it shares with the
tables taken from the proposed table schemas. `diff` prints, feature by
feature, how a proposed schema differs from the curated one, as a unified diff of
their text form.
"""

import difflib
import os
import shutil
import tempfile

import tensorflow_data_validation as tfdv
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from recsys.components.validate.validate import compute_statistics
from recsys.core.contracts import EXAMPLES_SCHEMA, FEATURES_FILE, RAW_TABLES
from recsys.core.features import load_registry, registry_path
from recsys.core.schemas import SCHEMA_DIR, load_schema, schema_path
from recsys.core.tables import read_raw_table, write_dataset

# The tables a user brings (the serving log is checked against the examples schema).
CURATED_TABLES = [table.name for table in RAW_TABLES.values() if not table.optional]


def add_numeric_ranges(schema, statistics) -> None:
    """A lower bound of 0 on numeric columns the data shows no negative value in,
    where the schema has no domain. No upper bound: the data is a sample, and the
    next day's longest watch or newest timestamp is above today's maximum (a
    curator adds a maximum where one is known, such as a rating scale)."""
    numeric = {
        f.path.step[0]: f.num_stats
        for f in statistics.datasets[0].features
        if f.HasField("num_stats")
    }
    for feature in schema.feature:
        stats = numeric.get(feature.name)
        if stats is None or feature.WhichOneof("domain_info") is not None or stats.min < 0:
            continue
        if feature.type == schema_pb2.INT:
            feature.int_domain.min = 0
        elif feature.type == schema_pb2.FLOAT:
            feature.float_domain.min = 0.0


def infer(data_root: str, out_dir: str, beam_pipeline_args: str = "[]") -> dict[str, str]:
    """Propose ``<table>.schema.pbtxt`` for every raw table under ``data_root``."""
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        datasets = {}
        for name in CURATED_TABLES:
            datasets[name] = os.path.join(scratch, name)
            write_dataset(read_raw_table(data_root, name), datasets[name])
        statistics = compute_statistics(
            datasets, os.path.join(scratch, "stats"), beam_pipeline_args
        )
    written, proposed = {}, {}
    for name, stats in statistics.items():
        # value_count (not shape) for single values: the curated schemas use it too,
        # so the diff shows real differences only.
        schema = tfdv.infer_schema(stats, infer_feature_shape=False)
        add_numeric_ranges(schema, stats)
        written[name] = os.path.join(out_dir, f"{name}.schema.pbtxt")
        tfdv.write_schema_text(schema, written[name])
        proposed[name] = schema
    written[EXAMPLES_SCHEMA] = os.path.join(out_dir, f"{EXAMPLES_SCHEMA}.schema.pbtxt")
    tfdv.write_schema_text(examples_schema(proposed), written[EXAMPLES_SCHEMA])
    written[FEATURES_FILE] = os.path.join(out_dir, FEATURES_FILE)
    shutil.copyfile(registry_path(), written[FEATURES_FILE])
    return written


def examples_schema(
    tables: dict[str, schema_pb2.Schema], curated_dir: str = ""
) -> schema_pb2.Schema:
    """The curated examples schema, each attribute of the users or items table (the
    registry's sources) taking its domain from that table's proposed schema, where
    their types agree. Ids keep no domain: serving meets new ones every day."""
    registry = load_registry(curated_dir)
    examples = load_schema(EXAMPLES_SCHEMA, curated_dir)
    for feature in examples.feature:
        source = registry[feature.name].source if feature.name in registry else None
        proposed = tables.get(source)
        if source not in ("users", "items") or proposed is None:
            continue
        column = next((f for f in proposed.feature if f.name == feature.name), None)
        field, domain = _domain(proposed, column) if column is not None else (None, None)
        if domain is None or column.type != feature.type:
            continue
        feature.ClearField("domain_info")
        feature.ClearField("distribution_constraints")
        getattr(feature, field).CopyFrom(domain)
    return examples


def _domain(schema: schema_pb2.Schema, feature: schema_pb2.Feature):
    """(field, domain) of a feature's domain, inline or, TFDV's way for text, a
    schema-level one it names; (None, None) without one."""
    which = feature.WhichOneof("domain_info")
    if which == "domain":
        named = [d for d in schema.string_domain if d.name == feature.domain]
        return ("string_domain", named[0]) if named else (None, None)
    if which in ("string_domain", "int_domain", "float_domain"):
        return which, getattr(feature, which)
    return None, None


def _features_as_text(schema) -> dict[str, list[str]]:
    return {
        feature.name: text_format.MessageToString(feature).splitlines()
        for feature in schema.feature
    }


def diff(proposed_dir: str, curated_dir: str = "") -> str:
    """Unified diff, per table and feature, from curated to proposed."""
    curated_dir = curated_dir or SCHEMA_DIR
    out = []
    for name in [*CURATED_TABLES, EXAMPLES_SCHEMA]:
        proposed_path = os.path.join(proposed_dir, f"{name}.schema.pbtxt")
        if not os.path.isfile(proposed_path):
            continue
        curated = _features_as_text(tfdv.load_schema_text(schema_path(name, curated_dir)))
        proposed = _features_as_text(tfdv.load_schema_text(proposed_path))
        for feature in sorted(set(curated) | set(proposed)):
            before, after = curated.get(feature, []), proposed.get(feature, [])
            if before == after:
                continue
            label = (
                "only in proposed" if not before else "only in curated" if not after else "differs"
            )
            out.append(f"## {name}: feature '{feature}' ({label})")
            out += list(
                difflib.unified_diff(
                    before, after, f"curated/{name}", f"proposed/{name}", lineterm="", n=1
                )
            )
    return "\n".join(out) if out else "no differences"
