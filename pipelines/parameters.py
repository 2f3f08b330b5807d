"""The pipeline's parameters, derived from the stages' configs.

Run-level parameters (where the data and the serving root are, the image, the
schemas, Beam's options, ...) are declared in ``RunConfig`` below; every other
parameter is a field of a stage's config (``recsys.core.config.parameter``),
named with the config's ``PREFIX``. The KFP pipeline's signature, its defaults
and descriptions, ``recsys run --config`` and ``--param`` checking, and
docs/parameters.md all come from ``pipeline_parameters()``.
"""

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass

from recsys.components.evaluate.config import Thresholds
from recsys.components.features.config import JoinConfig
from recsys.components.infra_validate.config import Budgets
from recsys.components.ingest.config import IngestConfig
from recsys.components.push.config import PushConfig
from recsys.components.train_ranking.config import RankingConfig
from recsys.components.train_retrieval.config import RetrievalConfig
from recsys.components.validate.config import ValidateConfig
from recsys.core.config import Parameter, config_from, parameter, parameters
from recsys.core.limits import BATCH_ROWS, SHUFFLE_BUFFER
from recsys.serving.rerank import RerankConfig

# Tag images immutably: KFP's cache key includes the image string, not its content.
DEFAULT_IMAGE = "localhost/recsys-pipeline:0.1.0"


@dataclass(frozen=True)
class RunConfig:
    """What a run needs besides the stages' own settings."""

    data_root: str = parameter(
        dataclasses.MISSING,
        "the raw tables (README, 'Bring your own data'); a path the pods can read",
    )
    serving_root: str = parameter(
        dataclasses.MISSING,
        "the TF Serving model root push writes and evaluate reads the champion from",
    )
    image: str = parameter(DEFAULT_IMAGE, "the image every stage runs in (set at compile time)")
    schema_dir: str = parameter(
        "",
        "curated schemas and their feature registry (features.yaml); empty: the packaged schemas",
    )
    beam_pipeline_args: str = parameter(
        "[]",
        "Beam options of the Beam stages (join, validate, transform) as a JSON list; "
        "empty: DirectRunner",
    )
    batch_rows: int = parameter(
        BATCH_ROWS,
        "rows a task holds at once where it streams a table (ingest, the join's serving "
        "snapshots, evaluate, the trainers' reads): with the trainers' shuffle buffers, "
        "what bounds each task's memory",
    )
    shuffle_buffer: int = parameter(
        SHUFFLE_BUFFER,
        "rows the trainers shuffle together as they stream the training data (with "
        "batch_rows, what bounds their memory)",
    )
    training_workers: int = parameter(
        1,
        "workers each trainer trains on (tf.distribute.MultiWorkerMirroredStrategy): "
        "local processes, or a TFJob's replicas when the task runs on Kubernetes",
    )
    state_root: str = parameter(
        "",
        "where state kept between runs lives: statistics/ (drift baselines) and blessed/ "
        "(warm-start checkpoints); empty: the pipeline root",
    )
    warm_start: bool = parameter(
        False,
        "start both trainers from the last blessed model's weights (found under the state root)",
    )
    rerank: str = parameter(
        RerankConfig().to_json(),
        "re-ranking rules (JSON): k, max_per_creator, "
        "max_per_category, mmr_lambda, freshness_boost, freshness_half_life_days, "
        "drop_watched, blocklist; evaluated, then pushed with the models",
    )


# In the order the DAG runs them.
CONFIGS = (
    RunConfig,
    IngestConfig,
    JoinConfig,
    ValidateConfig,
    RetrievalConfig,
    RankingConfig,
    Budgets,
    Thresholds,
    PushConfig,
)


def pipeline_parameters(image: str = DEFAULT_IMAGE) -> dict[str, Parameter]:
    """Every pipeline parameter by name, required ones first; ``image`` is the default
    of the image parameter. A name two configs declare differently is an error."""
    found: dict[str, Parameter] = {}
    for config in CONFIGS:
        for declared in parameters(config):
            if declared.name == "image":
                declared = dataclasses.replace(declared, default=image)
            known = found.get(declared.name)
            if known and (known.type, known.default) != (declared.type, declared.default):
                raise TypeError(
                    f"pipeline parameter '{declared.name}' is declared as "
                    f"{known.type_name} = {known.default!r} by "
                    f"{known.config.__name__} and as {declared.type_name} = "
                    f"{declared.default!r} by {declared.config.__name__}"
                )
            found.setdefault(declared.name, declared)
    required = [p for p in found.values() if p.default is dataclasses.MISSING]
    return {p.name: p for p in required + [p for p in found.values() if p not in required]}


def signature(
    image: str = DEFAULT_IMAGE, return_annotation=inspect.Signature.empty
) -> inspect.Signature:
    """The pipeline function's signature: typed, with the configs' defaults."""
    return inspect.Signature(
        [
            inspect.Parameter(
                p.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                annotation=p.type,
                default=inspect.Parameter.empty if p.default is dataclasses.MISSING else p.default,
            )
            for p in pipeline_parameters(image).values()
        ],
        return_annotation=return_annotation,
    )


class Arguments(Mapping):
    """A run's arguments by pipeline parameter name (values, or KFP's pipeline
    channels while the DAG is compiled)."""

    def __init__(self, values: Mapping):
        self._values = dict(values)

    def __getitem__(self, name):
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def of(self, config: type) -> dict:
        """The arguments of ``config``'s pipeline fields, by field name: what a stage's
        shim takes."""
        return {p.field: self._values[p.name] for p in parameters(config)}


def with_defaults(arguments: Mapping, image: str = DEFAULT_IMAGE) -> Arguments:
    """``arguments`` completed with every parameter's default; unknown or missing
    required parameters are errors."""
    known = pipeline_parameters(image)
    unknown = sorted(set(arguments) - set(known))
    if unknown:
        raise ValueError(f"unknown pipeline parameter(s) {unknown}; known: {sorted(known)}")
    values = {name: p.default for name, p in known.items()}
    values.update(arguments)
    missing = [name for name, value in values.items() if value is dataclasses.MISSING]
    if missing:
        raise ValueError(f"pipeline parameter(s) {missing} are required")
    return Arguments(values)


def check_arguments(arguments: Mapping, image: str = DEFAULT_IMAGE) -> None:
    """Build every stage's config from ``arguments`` so that a value its config
    refuses (``__post_init__``) is reported before a run starts, not when its
    stage runs minutes later."""
    values = with_defaults(arguments, image)
    for config in CONFIGS:
        try:
            config_from(config, values.of(config))
        except ValueError as error:
            raise ValueError(f"pipeline parameters: {error}") from None


def parameters_markdown(image: str = DEFAULT_IMAGE) -> str:
    """The parameter reference (docs/parameters.md), generated from the declarations."""
    lines = [
        "# Pipeline parameters",
        "",
        "Generated by `recsys parameters` from the stages' configs "
        "(`components/<stage>/config.py`) and `RunConfig` "
        "(`pipelines/parameters.py`); a test keeps this file current. Set them "
        "with `recsys run --config FILE` (YAML), a data directory's `recsys.yaml`, or "
        "`--param NAME=VALUE` for `recsys submit` and `recsys schedule`.",
    ]
    current = None
    for p in pipeline_parameters(image).values():
        if p.config is not current:
            current = p.config
            lines += [
                "",
                f"## {_SECTIONS.get(current, current.__name__)} (`{current.__name__}`)",
                "",
                "| parameter | type | default | meaning |",
                "|---|---|---|---|",
            ]
        default = "required" if p.default is dataclasses.MISSING else f"`{p.default!r}`"
        lines.append(f"| `{p.name}` | {p.type_name} | {default} | {p.help} |")
    return "\n".join(lines) + "\n"


_SECTIONS = {
    RunConfig: "The run",
    IngestConfig: "ingest",
    JoinConfig: "features/join",
    ValidateConfig: "validate",
    RetrievalConfig: "train_retrieval",
    RankingConfig: "train_ranking",
    Budgets: "infra_validate",
    Thresholds: "evaluate",
    PushConfig: "push",
}
