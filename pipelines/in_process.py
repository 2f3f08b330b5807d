"""The DAG run in this process: the same wiring and the same stage shims as the
compiled pipeline, without KFP's executor.

Data checks (``recsys check``), tests and benchmarks run the DAG, or a slice of
it, this way: ``stop_after`` ends the run after a stage, and ``given`` supplies a
stage's outputs instead of running it (a re-split of the events, a blessing
decided elsewhere). Each stage's outputs are KFP artifact objects at
``<root>/<stage>/<output>``; ``root`` is also the pipeline root, where validate
keeps drift baselines and push keeps warm-start checkpoints, as on Kubeflow.
Exceptions propagate as the stage raised them.
"""

import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field

from kfp.dsl.types import type_annotations

from recsys.core import storage
from recsys.pipelines.dag import STAGES, wire
from recsys.pipelines.parameters import with_defaults


@dataclass
class Task:
    """One stage's outputs (output name -> KFP artifact)."""

    name: str
    outputs: dict = field(default_factory=dict)


class _Stopped(Exception):
    """Raised after the ``stop_after`` stage: the rest of the DAG does not run."""


class InProcessStages:
    def __init__(self, root: str, given: Mapping | None = None, stop_after: str = ""):
        named = set(given or {}) | ({stop_after} - {""})
        unknown = sorted(named - set(STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; the stages are {list(STAGES)}")
        self.root, self.pipeline_root = root, root
        self.given, self.stop_after = dict(given or {}), stop_after
        self.tasks: dict[str, Task] = {}

    def __getattr__(self, name: str):
        if name not in STAGES:
            raise AttributeError(name)
        return lambda **arguments: self._run(name, arguments)

    def configure(self, task, **_):
        """Kubeflow's resources, retries and caching: nothing to do in process."""
        return task

    def _run(self, name: str, arguments: dict) -> Task:
        shim = STAGES[name]
        outputs = {}
        directory = os.path.join(self.root, name)
        if name in self.given:
            outputs = {
                output: _artifact(shim, output, value, directory)
                for output, value in self.given[name].items()
            }
        else:
            storage.remove(directory)  # a fresh run of this stage
            storage.makedirs(directory)
            for output, annotation in typing.get_type_hints(shim, include_extras=True).items():
                if type_annotations.is_artifact_wrapped_in_Output(annotation):
                    outputs[output] = _artifact(
                        shim, output, os.path.join(directory, output), directory
                    )
            shim(**arguments, **outputs)
        self.tasks[name] = task = Task(name, outputs)
        if name == self.stop_after:
            raise _Stopped()
        return task


def _artifact(shim, output: str, value, directory: str):
    """``value`` as the artifact type of ``shim``'s output: an artifact object passes
    through, a path becomes one."""
    if not isinstance(value, str):
        return value
    annotation = typing.get_type_hints(shim, include_extras=True)[output]
    kind = type_annotations.get_io_artifact_class(annotation)
    return kind(name=output, uri=value, metadata={})


@dataclass
class InProcessRun:
    tasks: dict[str, Task]
    outputs: dict  # the pipeline's outputs by name; empty when the run stopped early

    def artifact(self, stage: str, output: str):
        return self.tasks[stage].outputs[output]

    def paths(self) -> dict[str, str]:
        """Every output's path by output name (``<stage>.<output>`` where two stages
        share a name, such as the trainers' checkpoints)."""
        counts = {}
        for task in self.tasks.values():
            for output in task.outputs:
                counts[output] = counts.get(output, 0) + 1
        return {
            output if counts[output] == 1 else f"{task.name}.{output}": artifact.path
            for task in self.tasks.values()
            for output, artifact in task.outputs.items()
        }


def run_in_process(
    root: str, arguments: Mapping, stop_after: str = "", given: Mapping | None = None
) -> InProcessRun:
    """Run the DAG (or its stages up to ``stop_after``) on ``arguments`` (pipeline
    parameters; the rest take their defaults) with outputs under ``root``. ``given``:
    stage -> {output: artifact or path} replaces those stages' runs."""
    root = os.path.abspath(root)
    storage.makedirs(root)
    stages = InProcessStages(root, given, stop_after)
    try:
        outputs = wire(stages, with_defaults(arguments))
    except _Stopped:
        outputs = {}
    return InProcessRun(stages.tasks, outputs)
