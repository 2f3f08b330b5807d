"""Stage parameters, declared once.

Each stage's config is a frozen dataclass whose fields are declared with
``parameter(default, help)``: the one place a parameter's name, type, default and
meaning are written. The pipeline's parameters are derived from these fields
(``recsys.pipelines.parameters``: named ``<PREFIX><field>``, typed and defaulted
like the field), KFP shims rebuild the config from their arguments with
``config_from``, and the parameter reference (docs/parameters.md) is generated
from the help texts. A test checks every shim's signature against its config.
"""

import contextlib
import dataclasses
import datetime
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass

# The parameter types a KFP pipeline and its local runner pass through unchanged.
PARAMETER_TYPES = (str, int, float, bool)


def parameter(default, help: str, *, pipeline: bool = True, shared: bool = False):
    """A config field. ``pipeline=False``: a knob for code and benchmarks, not a
    pipeline parameter. ``shared``: one pipeline parameter without the config's
    prefix, which several stages take (the random seed)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "pipeline": pipeline, "shared": shared}
    )


@dataclass(frozen=True)
class Parameter:
    """A pipeline parameter and the config field it comes from."""

    name: str
    field: str
    type: type
    default: object
    help: str
    config: type

    @property
    def type_name(self) -> str:
        return self.type.__name__

    def parse(self, value):
        """``value`` (from YAML, or text from a command line) as this parameter's
        type; a ValueError says what was expected."""
        kind = self.type
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueError(f"expected true or false, got {value!r}")
        if kind in (int, float):
            whole = not (isinstance(value, float) and not value.is_integer())
            if not isinstance(value, bool) and (kind is float or whole):
                with contextlib.suppress(TypeError, ValueError):
                    return kind(value)
            raise ValueError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {value!r}"
            )
        if isinstance(value, (dict, list)):  # JSON-valued parameters written as YAML
            return json.dumps(value)
        # YAML reads an unquoted date as a date: the parameter takes its ISO text.
        return value.isoformat() if isinstance(value, datetime.date) else str(value)


def parameters(config: type) -> list[Parameter]:
    """The pipeline parameters of a config class, in field order."""
    prefix = getattr(config, "PREFIX", "")
    hints = typing.get_type_hints(config)
    found = []
    for field in dataclasses.fields(config):
        if not field.metadata.get("pipeline", False):
            continue
        kind = hints[field.name]
        if kind not in PARAMETER_TYPES:
            raise TypeError(
                f"{config.__name__}.{field.name}: a pipeline parameter must be "
                f"one of {[t.__name__ for t in PARAMETER_TYPES]}, got {kind}"
            )
        name = field.name if field.metadata["shared"] else f"{prefix}{field.name}"
        found.append(
            Parameter(name, field.name, kind, field.default, field.metadata["help"], config)
        )
    return found


def config_from(config: type, values: Mapping):
    """The config built from ``values`` (e.g. a KFP shim's ``locals()``): each pipeline
    field taken from its field name, the rest left at their defaults."""
    return config(**{p.field: values[p.field] for p in parameters(config)})
