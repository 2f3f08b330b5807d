"""Shared by the bench scripts: progress lines, the machine line, and runs of the
pipeline's own DAG in process (``recsys.pipelines.in_process``): ingest alone, and
the join and transform of a re-split of ingested events."""

import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import pandas as pd  # noqa: E402
from kfp.dsl import Dataset  # noqa: E402

from recsys.core.contracts import EVAL_EVENTS, EVENT_TS, TRAIN_EVENTS  # noqa: E402
from recsys.core.schemas import SCHEMA_DIR  # noqa: E402
from recsys.core.tables import write_dataset  # noqa: E402
from recsys.pipelines.in_process import InProcessRun, run_in_process  # noqa: E402

DEFAULT_ML_100K = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "ml-100k"
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    return (
        f"machine: {os.cpu_count()} cores, {platform.platform()}, Python "
        f"{platform.python_version()}"
    )


def ingest(data_root: str, root: str, **parameters) -> InProcessRun:
    """The DAG's first stage on ``data_root`` with these pipeline parameters."""
    return run_in_process(
        root, {"data_root": data_root, "serving_root": "", **parameters}, stop_after="ingest"
    )


def prepare_split(
    ingested: InProcessRun,
    work: str,
    train: pd.DataFrame,
    evaluation: pd.DataFrame,
    eval_start: int | None = None,
    **parameters,
) -> dict[str, str]:
    """Examples (point-in-time join) and transformed data of one (train, eval) split of
    ingested events, under ``work``: the DAG from the join through the transform, with
    ingest's outputs given, its events replaced by the split, and validate given the
    schemas (a re-split of checked data is not checked again). ``eval_start`` (default:
    the first eval event) dates the eval item snapshot. Returns every output's path."""
    outputs = dict(ingested.tasks["ingest"].outputs)
    for name, frame in ((TRAIN_EVENTS, train), (EVAL_EVENTS, evaluation)):
        path = os.path.join(work, name)
        write_dataset(frame, path)
        metadata = dict(outputs[name].metadata)
        metadata["eval_start"] = (
            int(evaluation[EVENT_TS].min()) if eval_start is None else eval_start
        )
        outputs[name] = Dataset(name=name, uri=path, metadata=metadata)
    schema_dir = parameters.get("schema_dir") or SCHEMA_DIR
    run = run_in_process(
        os.path.join(work, "pipeline_root"),
        {"data_root": "", "serving_root": "", **parameters},
        stop_after="transform_features",
        given={"ingest": outputs, "validate": {"schema": schema_dir}},
    )
    return run.paths()
