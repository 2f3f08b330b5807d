"""Run the compiled pipeline YAML locally: KFP's SubprocessRunner + Beam DirectRunner.

The same ``pipeline.yaml`` that is uploaded to Kubeflow is loaded here, so a
local run exercises exactly the DAG that production runs. KFP's local runner
is chatty (it dumps every task's executor input), so it runs in a child
process whose full output goes to ``<workdir>/runs/<run id>/run.log``; the console
shows the stage progress lines and, at the end, a summary.

Runs in one workdir share its pipeline root (drift baselines, warm-start state)
and serving root, as scheduled runs do, and may overlap (a manual run during a
scheduled one): each has its own directory for its compiled YAML, outputs and log,
and push re-checks under the serving root's writer lease that the version it
replaces is the one its candidate was compared with.
"""

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import warnings

import psutil
import yaml

from recsys.app import fork_server
from recsys.core import storage
from recsys.core.contracts import RAW_TABLES
from recsys.core.features import load_registry
from recsys.core.memory import GIB, tree_rss
from recsys.core.progress import PROGRESS_LINE, log
from recsys.pipelines.kfp_pipeline import compile_pipeline
from recsys.pipelines.parameters import DEFAULT_IMAGE, check_arguments, pipeline_parameters

# Pipeline parameters that belong to a data directory (``recsys import-movielens``
# writes them), picked up by ``recsys run --data`` and ``recsys check``.
DATA_CONFIG = "recsys.yaml"


class RunFailed(RuntimeError):
    pass


def load_config(path: str | None) -> dict:
    """A YAML mapping of pipeline parameters; unknown keys are an error, not ignored."""
    if not path:
        return {}
    try:
        config = yaml.safe_load(storage.read_text(path).removeprefix("\ufeff")) or {}
    except yaml.YAMLError as error:
        # The context mark is where the broken construct starts (often the line to fix).
        mark = getattr(error, "context_mark", None) or getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or error
        raise ValueError(
            f"{path} is not valid YAML{where}: {problem}. Write one `name: value` per "
            "line (docs/parameters.md lists the names)."
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{path}: expected `name: value` lines (a mapping of pipeline parameters), "
            f"got a {type(config).__name__}"
        )
    known = pipeline_parameters()
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown pipeline parameter(s) {unknown}; known: {sorted(known)}")
    typed = {}
    for name, value in config.items():
        try:
            typed[name] = known[name].parse(value)
        except ValueError as error:
            raise ValueError(
                f"{path}: {name}: {error} ({known[name].type_name}, default "
                f"{known[name].default!r})"
            ) from None
    return typed


def data_config(data_root: str | None) -> dict:
    """Pipeline parameters a data directory carries in ``recsys.yaml`` (as
    ``recsys import-movielens`` writes), with ``schema_dir`` relative to it."""
    path = storage.join(data_root, DATA_CONFIG) if data_root else ""
    if not path or not storage.isfile(path):
        return {}
    config = load_config(path)
    if config.get("schema_dir"):
        config["schema_dir"] = storage.join(absolute(data_root), config["schema_dir"])
    log("run", f"parameters from {path}: {json.dumps(config)}")
    return config


def run_compiled(pipeline_yaml: str, arguments: dict, pipeline_root: str) -> dict:
    """Execute the compiled YAML in this process; return the pipeline's outputs as
    ``{name: {"path": ..., "metadata": {...}}}``."""
    import kfp.components
    import kfp.local

    # kfp warns for any image whose name lacks "python"; ours is a Python image.
    warnings.filterwarnings("ignore", message=".*non-Python base image.*")
    kfp.local.init(
        runner=kfp.local.SubprocessRunner(use_venv=False),
        pipeline_root=pipeline_root,
        raise_on_error=True,
    )
    if os.environ.get(fork_server.SOCKET_ENV):
        _tasks_through_fork_server()
    task = kfp.components.load_component_from_file(pipeline_yaml)(**arguments)
    return {
        name: {"path": artifact.path, "metadata": dict(artifact.metadata)}
        for name, artifact in task.outputs.items()
    }


def _tasks_through_fork_server() -> None:
    """KFP's SubprocessRunner puts its interpreter where a task's compiled command says
    ``python3``; put the fork server's client there instead (``recsys.app.fork_server``).
    A patch of kfp 2.13's module function (pinned in requirements.lock): the runner
    has no setting for the interpreter."""
    from kfp.local import subprocess_task_handler

    replace = subprocess_task_handler.replace_python_executable
    subprocess_task_handler.replace_python_executable = lambda command, python: replace(
        command, fork_server.client_command(python)
    )


OUTPUTS_FILE, LOG_FILE = "outputs.json", "run.log"


def absolute(path: str) -> str:
    """A local path made absolute (the run's tasks start elsewhere); a URL as it is."""
    return os.path.abspath(path) if storage.is_local(path) else path


def run_dir(workdir: str, run_id: str) -> str:
    """Where one run's compiled YAML, outputs and full log go."""
    return os.path.join(os.path.abspath(workdir), "runs", run_id)


def new_run_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def run(
    workdir: str,
    data_root: str,
    config: dict,
    image: str = DEFAULT_IMAGE,
    verbose: bool = False,
    label: str = "",
    fresh_task_processes: bool = False,
) -> dict:
    """Compile, run the YAML in a child process, return its outputs (raises RunFailed).
    This run's files go to ``run_dir(workdir, label)`` (default label: the start
    time and a random suffix), so runs at once never mix them. Tasks start from a fork
    server (``recsys.app.fork_server``) unless ``fresh_task_processes``: then each
    imports its libraries in a new interpreter, as KFP's runner does by default."""
    workdir = os.path.abspath(workdir)
    arguments = {
        "data_root": absolute(data_root),
        "serving_root": os.path.join(workdir, "serving"),
    }
    arguments.update(config)
    check_arguments(arguments, image)  # a refused value is reported now, not minutes in
    directory = run_dir(workdir, label or new_run_id())
    os.makedirs(directory, exist_ok=True)
    pipeline_yaml = compile_pipeline(os.path.join(directory, "pipeline.yaml"), image)
    outputs_path = os.path.join(directory, OUTPUTS_FILE)
    log_path = os.path.join(directory, LOG_FILE)
    if os.path.exists(outputs_path):  # a label used before: its old outputs are not ours
        os.remove(outputs_path)
    log("run", f"compiled {pipeline_yaml}; running it locally (full log: {log_path})")
    log("run", f"arguments: {json.dumps(arguments)}")
    started = time.monotonic()
    command = [
        sys.executable,
        "-m",
        "recsys.app.local_run",
        "--pipeline-yaml",
        pipeline_yaml,
        "--arguments",
        json.dumps(arguments),
        "--pipeline-root",
        os.path.join(workdir, "pipeline_root"),
        "--outputs",
        outputs_path,
    ]
    watch = StageWatch()
    with (
        fork_server.running(not fresh_task_processes, lambda line: log("run", line)) as launcher,
        open(log_path, "w") as log_file,
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, **launcher.env},
        ) as child,
        watch.sampling(child.pid, launcher.pid),
    ):
        for line in child.stdout:
            log_file.write(line)
            watch.read(line)
            if verbose or PROGRESS_LINE.match(line):
                print(line.strip() if not verbose else line.rstrip(), file=sys.stderr, flush=True)
    if child.returncode != 0 or not os.path.exists(outputs_path):
        killed = watch.unfinished()
        raise RunFailed(
            killed_message(killed, watch.peak_of(killed), log_path)
            if killed
            else f"the pipeline failed after {time.monotonic() - started:.0f}s; "
            f"the failing stage's message is above, the full log in {log_path}"
        )
    with open(outputs_path) as handle:
        outputs = json.load(handle)
    outputs["seconds"] = time.monotonic() - started
    outputs["stage_seconds"] = sum(watch.seconds.values())
    outputs["arguments"] = arguments
    outputs["run_dir"] = directory
    return outputs


STAGE_EVENT = re.compile(r"\] ([\w/-]+): (started|finished in|FAILED after) ?([\d.]+)?")
# What bounds each stage's memory, for the message when one is killed for it.
MEMORY_KNOBS = {
    "ingest": "batch_rows",
    "features/join": "batch_rows (the serving snapshots) and the feature views' join "
    'strategy (feature_views: {"<view>": {"join": "bucket"}} on a distributed '
    "Beam runner)",
    "validate": "beam_pipeline_args (a distributed Beam runner: DirectRunner holds "
    "statistics of every table in one process)",
    "features/transform": "beam_pipeline_args (a distributed Beam runner)",
    "train_retrieval": "shuffle_buffer and batch_rows, or training_workers",
    "train_ranking": "shuffle_buffer and batch_rows, or training_workers",
    "evaluate": "batch_rows",
}


class StageWatch:
    """Which stage of a local run is running (from its progress lines), how long each
    took, and the most resident memory the run's processes held during each (sampled)."""

    def __init__(self):
        self.started: list[str] = []
        self.ended: set[str] = set()
        self.peaks: dict[str, int] = {}
        self.seconds: dict[str, float] = {}

    def read(self, line: str) -> None:
        match = STAGE_EVENT.search(line)
        if match and match.group(2) == "started":
            self.started.append(match.group(1))
        elif match:
            self.ended.add(match.group(1))
            if match.group(3):
                self.seconds[match.group(1)] = float(match.group(3))

    def unfinished(self) -> str | None:
        """A stage that started and never finished nor failed: its process was killed."""
        left = [name for name in self.started if name not in self.ended]
        return left[-1] if left else None

    def peak_of(self, stage: str) -> int:
        return self.peaks.get(stage, 0)

    @contextlib.contextmanager
    def sampling(self, pid: int, launcher_pid: int | None = None, interval: float = 0.5):
        """Samples ``pid``'s process tree and the tasks the fork server ``launcher_pid``
        started (not the server itself: it only holds the libraries the tasks share)."""
        stop = threading.Event()

        def sample():
            process = psutil.Process(pid)
            launcher = psutil.Process(launcher_pid) if launcher_pid else None
            while not stop.wait(interval):
                try:
                    rss = tree_rss(process)
                except psutil.NoSuchProcess:
                    return
                with contextlib.suppress(psutil.NoSuchProcess):
                    tasks = launcher.children() if launcher else []
                    rss += sum(tree_rss(task) for task in tasks)
                if self.started:
                    stage = self.started[-1]
                    self.peaks[stage] = max(self.peaks.get(stage, 0), rss)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()


def killed_message(stage: str, peak: int, log_path: str) -> str:
    """Why a run stopped when a stage's process vanished without a word."""
    total = psutil.virtual_memory().total
    return (
        f"stage '{stage}' was killed: its process ended without finishing or reporting "
        f"an error, which is how the kernel stops a process that runs the machine out of "
        f"memory (exit 137, SIGKILL). The run held {peak / GIB:.1f} GiB at most while it ran "
        f"(this machine has {total / GIB:.1f} GiB). What bounds its memory: "
        f"{MEMORY_KNOBS.get(stage, 'batch_rows')} (docs/design.md, 'Bounded memory'); "
        f"lower it with --config, or give the task more memory. Full log: {log_path}"
    )


def summary(outputs: dict) -> str:
    """Data sizes, metrics against baseline, the gate decision and pushed paths."""
    counts = {k: int(v) for k, v in outputs["ingest_metrics"]["metadata"].items()}
    work = outputs.get("stage_seconds")
    # Wall time against the stages' own: the rest is starting tasks and moving artifacts.
    against_work = (
        f" (the stages' own work {work:.0f}s: {outputs['seconds'] / work:.2f}x)" if work else ""
    )
    lines = [
        "",
        f"=== recsys run finished in {outputs['seconds']:.0f}s{against_work} ===",
        f"data: {counts['train_events']} train / {counts['eval_events']} eval events, "
        f"{counts['users']} users, {counts['items']} items, {counts['user_features']} user + "
        f"{counts['item_features']} item feature rows; outside the window and left out: "
        f"{counts['impressions_before_window']} older and "
        f"{counts['impressions_at_or_after_as_of']} at/after as_of events",
        "",
    ]
    quarantined = counts.get("quarantined", 0)
    reasons = ", ".join(
        f"{name[len('quarantined_') :]}: {value}"
        for name, value in counts.items()
        if name.startswith("quarantined_")
    )
    lines += [
        f"quarantined {quarantined} rows{f' ({reasons})' if reasons else ''}: "
        f"{outputs['quarantine']['path']}",
        "",
    ]
    lines += features_summary(outputs) + [""]
    for name in ("validation_report", "evaluation_report", "push_report"):
        with open(outputs[name]["path"]) as handle:
            lines += [handle.read().strip(), ""]
    lines.append(f"this run's outputs and full log: {outputs['run_dir']}")
    lines.append(f"plots (HTML, render offline): {outputs['validation_html']['path']}")
    lines.append(f"                              {outputs['evaluation_html']['path']}")
    return "\n".join(lines) + "\n"


def features_summary(outputs: dict) -> list[str]:
    """The features the models took, those switched off and why, and the tables
    derived from the interactions."""
    registry = load_registry(outputs.get("arguments", {}).get("schema_dir", ""))
    used = [name for name, feature in registry.features.items() if feature.models]
    off = dict(registry.switched_off)
    if not outputs["ranking_training"]["metadata"].get("watch_head", 1):
        off["the ranker's watch-time task"] = "no training click has watch time"
    counts = outputs["ingest_metrics"]["metadata"]
    derived = [name for name in RAW_TABLES if counts.get(f"{name}_derived")]
    lines = [f"features used ({len(used)}): {', '.join(used)}"]
    if off:
        lines.append("switched off:")
        lines += [f"  {name}: {reason}" for name, reason in off.items()]
    if derived:
        lines.append(f"derived from the interactions (no such table): {', '.join(derived)}")
    return lines


def _child_main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pipeline-yaml", required=True)
    parser.add_argument("--arguments", required=True)
    parser.add_argument("--pipeline-root", required=True)
    parser.add_argument("--outputs", required=True)
    args = parser.parse_args(argv)
    try:
        outputs = run_compiled(args.pipeline_yaml, json.loads(args.arguments), args.pipeline_root)
    except RuntimeError as error:  # kfp.local: a task failed
        print(f"run: {error}", flush=True)
        return 1
    with open(args.outputs, "w") as handle:
        json.dump(outputs, handle)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
