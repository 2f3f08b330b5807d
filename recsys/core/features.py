"""The feature registry: what each feature of the training examples is for.

``features.yaml`` (beside the curated schemas, ``schemas/`` or your own
``schema_dir``) declares per feature its group, its source, its transform, the
models that use it, its role and its default; ``examples.schema.pbtxt`` declares
its type and domain. ``load_registry`` reads both and checks each against the
other, so a mistake stops the run at its first stage with the file, the feature
and the fix, instead of surfacing as a shape error in a trainer.

Everything that lists features derives the list from here: the join (which
columns to attach from which table or view, and their defaults), the transform
graph, the towers, the serving signatures and their contract, the serving
snapshots, the funnel's cold-start rows and re-ranking attributes. Lists come in
the order of ``features.yaml``, which fixes the models' input order.

No TensorFlow here: serving code and ingest read the registry too.
"""

import functools
import os
from dataclasses import dataclass

import numpy as np
import yaml

from recsys.core import contracts, storage
from recsys.core.derived import DERIVED
from recsys.core.schemas import SCHEMA_DIR, SCHEMA_DTYPES, is_list, load_schema

GROUPS = ("id", "user", "item", "context", "label")
ENTITIES = ("user", "item")
SOURCES = (
    "event",
    "users",
    "items",
    "user_features",
    "item_features",
    "missing_flag",
    "history",
    "derived",
)
TRANSFORMS = ("vocabulary", "sequence", "log_z_score", "z_score", "flag", "category", "none")
ROLES = ("category", "creator", "item_age")
CROSS_KINDS = ("contains",)
# Vocabulary indices past the vocabulary, by default: ids unseen in training (new users,
# uploads) and, past a feature's ``top_ids``, the rarer ids too, by a hash of the id.
OOV_BUCKETS = 1
# Transformed id sequences are padded with this index (vocabulary indices are >= 0).
SEQUENCE_PADDING = -1


def history_columns(name: str, value: str) -> tuple[str, str, str]:
    """The columns of an engagement history called ``name``: its items, their count and
    the mean of their ``value``."""
    return f"{name}_items", f"{name}_count", f"{name}_mean_{value}"


# The engagement history (source "history") as the join computes it: the user's last
# clicked items, how many clicks came before the event, their mean watch time.
HISTORY_COLUMNS = history_columns("user_history", contracts.WATCH_SECONDS)
# Columns of the examples that are keys of the event, not features.
EVENT_KEYS = (contracts.EVENT_ID, contracts.EVENT_TS)


def transformed_name(name: str, transform: str) -> str:
    """A feature's name in the transform graph's output: indices end in _idx, z-scores in _z."""
    if transform in ("vocabulary", "sequence"):
        return f"{name}_idx"
    if transform in ("log_z_score", "z_score"):
        return f"{name}_z"
    return name


class RegistryError(ValueError):
    """features.yaml and the curated schemas disagree; the message says where and how to fix."""


@dataclass(frozen=True)
class Feature:
    name: str
    group: str
    source: str
    transform: str
    models: tuple[str, ...]
    dtype: str  # from the examples schema: string, int64 or float32
    is_list: bool
    default: object
    entity: str | None = None  # user or item; None for context features and labels
    of: str | None = None  # sequence: whose vocabulary; missing_flag: which view
    role: str | None = None
    cardinality: int | None = None  # category: from the schema's int_domain
    # A vocabulary's capacity, declared in features.yaml: the ``top_ids`` most frequent
    # ids of the training data keep their own embedding row (None: every id), and every
    # other id, seen or new, shares one of ``hash_buckets`` rows by a hash of the id.
    # The embedding table is at most top_ids + hash_buckets rows, whatever the log.
    top_ids: int | None = None
    hash_buckets: int = OOV_BUCKETS

    @property
    def transformed_name(self) -> str:
        """Its name in the transform graph's output."""
        return transformed_name(self.name, self.transform)

    @property
    def embedded(self) -> bool:
        """An index the models embed: a vocabulary id or an integer category."""
        return self.transform in ("vocabulary", "category")


@dataclass(frozen=True)
class Cross:
    """A user x item feature computed in the transform graph from two raw features."""

    name: str
    kind: str
    inputs: tuple[str, ...]
    models: tuple[str, ...]

    @property
    def transformed_name(self) -> str:
        return self.name


class FeatureRegistry:
    """The checked registry. ``features`` and ``crosses`` are in file order."""

    def __init__(
        self,
        features: list[Feature],
        crosses: list[Cross],
        path: str,
        switched_off: dict[str, str] | None = None,
    ):
        self.features = {feature.name: feature for feature in features}
        self.crosses = {cross.name: cross for cross in crosses}
        self.path = path
        # Features of the packaged registry this one leaves out, and why (written by
        # `recsys import`): what the run summary lists as switched off.
        self.switched_off = dict(switched_off or {})

    def __getitem__(self, name: str) -> Feature:
        return self.features[name]

    def __contains__(self, name: str) -> bool:
        return name in self.features

    def select(
        self, *, group=None, entity=None, source=None, transform=None, tower=None
    ) -> list[Feature]:
        """Features matching every given attribute, in file order."""
        return [
            f
            for f in self.features.values()
            if (group is None or f.group == group)
            and (entity is None or f.entity == entity)
            and (source is None or f.source == source)
            and (transform is None or f.transform == transform)
            and (tower is None or tower in f.models)
        ]

    def inputs(self, tower: str) -> list[str]:
        """The raw features ``tower`` takes (a serving model's signature inputs)."""
        return [f.name for f in self.select(tower=tower)]

    def tower_crosses(self, tower: str) -> list[Cross]:
        return [cross for cross in self.crosses.values() if tower in cross.models]

    def side(self, entity: str) -> list[str]:
        """Everything known about one user or item: its id and its group's features
        (what the serving snapshot holds per entity)."""
        return [f.name for f in self.features.values() if f.entity == entity]

    @property
    def labels(self) -> list[str]:
        return [f.name for f in self.select(group="label")]

    def role(self, role: str) -> str | None:
        """The feature playing ``role`` (category, creator, item_age), if any."""
        found = [f.name for f in self.features.values() if f.role == role]
        return found[0] if found else None

    def default(self, name: str):
        """The value of feature ``name`` where nothing is known (0 for other columns)."""
        return self.features[name].default if name in self.features else 0

    def missing_row(self, entity: str, key: str) -> dict[str, np.ndarray]:
        """One row (arrays of length 1) of everything about an ``entity`` nobody has data
        for, id ``key``: each feature's default, its missing flags set. What training
        saw for users and items without feature rows (the cold start)."""
        row = {}
        for name in self.side(entity):
            feature = self.features[name]
            value = 1 if feature.source == "missing_flag" else feature.default
            if feature.group == "id":
                value = key
            column = np.empty(
                1, dtype=object if feature.dtype == "string" or feature.is_list else feature.dtype
            )
            column[0] = list(value) if feature.is_list else value
            row[name] = column
        return row

    def check(self, schema_dir: str = "") -> None:
        """Raise RegistryError unless every feature agrees with the curated schemas."""
        problems = _problems(self, schema_dir)
        if problems:
            raise RegistryError(
                f"{self.path} disagrees with the schemas in {schema_dir or SCHEMA_DIR}:\n"
                + "\n".join(f"  - {problem}" for problem in problems)
                + "\nFix the registry or the schema (docs/design.md, 'Adding a feature')."
            )


def registry_path(schema_dir: str = "") -> str:
    """``features.yaml`` beside the schemas; the packaged one if ``schema_dir`` has none
    (schema directories written before the registry existed)."""
    path = storage.join(schema_dir or SCHEMA_DIR, contracts.FEATURES_FILE)
    return path if storage.isfile(path) else os.path.join(SCHEMA_DIR, contracts.FEATURES_FILE)


def load_registry(schema_dir: str = "", path: str = "") -> FeatureRegistry:
    """The registry of ``schema_dir`` (or the file at ``path``), checked against the
    examples schema of ``schema_dir``."""
    path = path or registry_path(schema_dir)
    schema_file = storage.join(
        schema_dir or SCHEMA_DIR, f"{contracts.EXAMPLES_SCHEMA}.schema.pbtxt"
    )
    return _load(path, storage.version_token(path), schema_dir, storage.version_token(schema_file))


@functools.lru_cache(maxsize=16)
def _load(path: str, version: int, schema_dir: str, schema_version: int) -> FeatureRegistry:
    try:
        document = yaml.safe_load(storage.read_text(path)) or {}
    except yaml.YAMLError as error:
        raise RegistryError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("features"), dict):
        raise RegistryError(f"{path}: expected a mapping with 'features' (name -> attributes)")
    examples = {f.name: f for f in load_schema(contracts.EXAMPLES_SCHEMA, schema_dir).feature}
    features = [
        _feature(path, name, dict(attributes or {}), examples.get(name))
        for name, attributes in document["features"].items()
    ]
    crosses = [
        _cross(path, name, dict(attributes or {}))
        for name, attributes in (document.get("crosses") or {}).items()
    ]
    switched_off = document.get("switched_off") or {}
    if not isinstance(switched_off, dict):
        raise RegistryError(f"{path}: 'switched_off' must map feature names to reasons")
    registry = FeatureRegistry(features, crosses, path, switched_off)
    registry.check(schema_dir)
    return registry


_FEATURE_KEYS = {
    "group",
    "entity",
    "source",
    "transform",
    "models",
    "of",
    "role",
    "default",
    "top_ids",
    "hash_buckets",
}


def _feature(path: str, name: str, attributes: dict, spec) -> Feature:
    unknown = set(attributes) - _FEATURE_KEYS
    if unknown:
        raise RegistryError(
            f"{path}: feature '{name}' has unknown key(s) {sorted(unknown)}; "
            f"allowed: {sorted(_FEATURE_KEYS)}"
        )
    if spec is None:
        raise RegistryError(
            f"{path}: feature '{name}' is not in {contracts.EXAMPLES_SCHEMA}.schema.pbtxt. "
            "Declare its type there too (every feature of the examples is in both files)."
        )
    dtype = SCHEMA_DTYPES.get(spec.type)
    listed = is_list(spec)
    default = attributes.get(
        "default", [] if listed else contracts.UNKNOWN if dtype == "string" else 0
    )
    cardinality = None
    if (
        attributes.get("transform") == "category"
        and spec.HasField("int_domain")
        and spec.int_domain.HasField("max")
    ):
        cardinality = int(spec.int_domain.max) + 1
    return Feature(
        name=name,
        group=attributes.get("group"),
        source=attributes.get("source"),
        transform=attributes.get("transform"),
        models=tuple(attributes.get("models") or ()),
        dtype=dtype,
        is_list=listed,
        default=default,
        entity=attributes.get("entity")
        or (attributes.get("group") if attributes.get("group") in ENTITIES else None),
        of=attributes.get("of"),
        role=attributes.get("role"),
        cardinality=cardinality,
        top_ids=_capacity(path, name, attributes, "top_ids", None),
        hash_buckets=_capacity(path, name, attributes, "hash_buckets", OOV_BUCKETS),
    )


def _capacity(path: str, name: str, attributes: dict, key: str, default):
    """``top_ids`` or ``hash_buckets`` of a vocabulary feature: a positive integer."""
    if key not in attributes:
        return default
    value = attributes[key]
    if attributes.get("transform") != "vocabulary":
        raise RegistryError(
            f"{path}: feature '{name}' sets {key}, which only a vocabulary feature has "
            f"(its transform is {attributes.get('transform')!r})"
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RegistryError(f"{path}: feature '{name}': {key} must be a positive integer")
    return value


def _cross(path: str, name: str, attributes: dict) -> Cross:
    unknown = set(attributes) - {"kind", "of", "models"}
    if unknown:
        raise RegistryError(f"{path}: cross '{name}' has unknown key(s) {sorted(unknown)}")
    return Cross(
        name,
        attributes.get("kind"),
        tuple(attributes.get("of") or ()),
        tuple(attributes.get("models") or ()),
    )


def _problems(registry: FeatureRegistry, schema_dir: str) -> list[str]:
    """Every disagreement between the registry and the curated schemas."""
    examples = load_schema(contracts.EXAMPLES_SCHEMA, schema_dir)
    specs = {f.name: f for f in examples.feature}
    tables = {
        name: {f.name for f in load_schema(name, schema_dir).feature}
        for name in ("users", "items", "user_features", "item_features")
    }
    problems = [
        f"examples schema feature '{name}' is not in the registry: add it (or remove "
        "it from the schema)"
        for name in specs
        if name not in registry.features and name not in EVENT_KEYS
    ]
    for name, feature in registry.features.items():
        spec = specs[name]
        where = f"feature '{name}'"
        for key, allowed in (("group", GROUPS), ("source", SOURCES), ("transform", TRANSFORMS)):
            if getattr(feature, key) not in allowed:
                problems.append(
                    f"{where}: {key} {getattr(feature, key)!r} is not one of {list(allowed)}"
                )
        problems += [
            f"{where}: model {model!r} is not one of {list(contracts.TOWERS)}"
            for model in feature.models
            if model not in contracts.TOWERS
        ]
        if feature.role is not None and feature.role not in ROLES:
            problems.append(f"{where}: role {feature.role!r} is not one of {list(ROLES)}")
        if feature.group == "id" and (
            feature.entity not in ENTITIES or feature.transform != "vocabulary"
        ):
            problems.append(
                f"{where}: an id needs 'entity: user' or 'entity: item' and transform vocabulary"
            )
        label = feature.group == "label"
        if label != (contracts.SERVING in spec.not_in_environment):
            problems.append(
                f"{where}: "
                + (
                    "a label must be not_in_environment SERVING in the schema"
                    if label
                    else "serving must send it, but the schema leaves it out of SERVING"
                )
            )
        if label and (feature.models or feature.transform != "none"):
            problems.append(f"{where}: a label has no models and transform 'none'")
        problems += _transform_problems(feature, spec, registry)
        problems += _default_problems(feature)
        problems += _source_problems(feature, tables)
    roles = [f.role for f in registry.features.values() if f.role]
    problems += [
        f"role {role!r} is given to more than one feature"
        for role in sorted(set(roles))
        if roles.count(role) > 1
    ]
    for cross in registry.crosses.values():
        if cross.kind not in CROSS_KINDS:
            problems.append(
                f"cross '{cross.name}': kind {cross.kind!r} is not one of {list(CROSS_KINDS)}"
            )
        elif (
            len(cross.inputs) != 2
            or not all(i in registry for i in cross.inputs)
            or not registry[cross.inputs[0]].is_list
            or registry[cross.inputs[1]].is_list
        ):
            problems.append(
                f"cross '{cross.name}': 'contains' needs [a list feature, a "
                f"single-valued feature] of the registry, got {list(cross.inputs)}"
            )
    return problems


def _default_problems(feature: Feature) -> list[str]:
    """A default that the feature's column could not hold."""
    default, kind = feature.default, feature.dtype
    fits = (
        isinstance(default, list)
        if feature.is_list
        else isinstance(default, str)
        if kind == "string"
        else isinstance(default, int | float) and not isinstance(default, bool)
    )
    if fits:
        return []
    return [f"feature '{feature.name}': default {default!r} is not a {kind} value"]


def _transform_problems(feature: Feature, spec, registry: FeatureRegistry) -> list[str]:
    where, transform = f"feature '{feature.name}'", feature.transform
    needs = {
        "vocabulary": ("string",),
        "sequence": ("string",),
        "log_z_score": ("int64", "float32"),
        "z_score": ("int64", "float32"),
        "flag": ("int64",),
        "category": ("int64",),
        "none": ("int64", "float32", "string"),
    }.get(transform, ())
    problems = []
    if needs and feature.dtype not in needs:
        problems.append(
            f"{where}: transform {transform} needs {' or '.join(needs)} values; "
            f"the schema says {feature.dtype}"
        )
    if feature.is_list != (transform == "sequence"):
        problems.append(
            f"{where}: "
            + (
                "only a sequence may be a list"
                if feature.is_list
                else "a sequence must be a list (value_count) in the schema"
            )
        )
    if transform == "sequence" and (
        feature.of not in registry or registry[feature.of].transform != "vocabulary"
    ):
        problems.append(
            f"{where}: a sequence needs 'of: <a vocabulary feature>', got {feature.of!r}"
        )
    if transform == "category" and (feature.cardinality is None or spec.int_domain.min != 0):
        problems.append(
            f"{where}: a category needs an int_domain from min 0 to a max in the "
            "schema (its range sets the embedding size)"
        )
    return problems


def _source_problems(feature: Feature, tables: dict[str, set]) -> list[str]:
    where, source = f"feature '{feature.name}'", feature.source
    if source in tables and feature.name not in tables[source]:
        return [f"{where}: source {source} but {source}.schema.pbtxt has no such column"]
    if source == "missing_flag" and (
        feature.of not in contracts.FEATURE_VIEWS
        or feature.name != contracts.missing_flag(feature.of)
    ):
        return [
            f"{where}: a missing flag needs 'of: <a feature view>' "
            f"({list(contracts.FEATURE_VIEWS)}) and the name '<view>_missing'"
        ]
    if source == "history" and feature.name not in HISTORY_COLUMNS:
        return [f"{where}: the history provides {list(HISTORY_COLUMNS)} only"]
    if source == "derived" and feature.name not in DERIVED:
        return [
            f"{where}: no derived feature of that name in recsys.core.derived "
            f"(known: {sorted(DERIVED)})"
        ]
    if source == "derived":
        return [
            f"{where}: derived from {table}.{column}, which {table}.schema.pbtxt does not "
            f"have; add the column (or remove the feature)"
            for table, columns in DERIVED[feature.name][0].items()
            for column in columns
            if column not in tables[table]
        ]
    if source == "event" and feature.name not in (
        contracts.USER_ID,
        contracts.ITEM_ID,
        contracts.CLICKED,
        contracts.WATCH_SECONDS,
    ):
        return [
            f"{where}: events carry only {contracts.USER_ID}, {contracts.ITEM_ID} and the "
            "labels; other features come from a table, a view or derived"
        ]
    return []
