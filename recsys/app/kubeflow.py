"""Runs and recurring runs on a Kubeflow Pipelines server (``recsys submit`` and
``recsys schedule``), through the KFP SDK's ``kfp.Client`` (v2beta1 API).

Both compile the pipeline first (``--image`` sets the image every component runs
in) unless given a compiled package, and check the parameters against the
pipeline's signature before anything reaches the server.
"""

import contextlib
import json
import os
import tempfile

from recsys.pipelines.kfp_pipeline import compile_pipeline
from recsys.pipelines.parameters import DEFAULT_IMAGE

DEFAULT_EXPERIMENT = "recsys"
# KFP's recurring-run controller replaces this macro in run parameters with each
# run's scheduled time (Go time layout, UTC), so a daily run's data window ends at
# its scheduled time and a re-run or backfill of that run sees the same window.
SCHEDULED_AS_OF = "[[ScheduledTime.2006-01-02T15:04:05Z]]"


class KubeflowError(ValueError):
    """The KFP API refused a request or could not be reached; says which and why."""


@contextlib.contextmanager
def api_errors(host: str):
    """KFP client and connection errors as one readable message."""
    import urllib3
    from kfp_server_api.exceptions import ApiException

    try:
        yield
    except ApiException as error:
        raise KubeflowError(
            f"the KFP API at {host} answered {error.status} {error.reason}: "
            f"{(error.body or '').strip()[:500]}"
        ) from None
    except urllib3.exceptions.HTTPError as error:
        raise KubeflowError(
            f"cannot reach the KFP API at {host} ({error}); check --host "
            "(e.g. https://kubeflow.example.com/pipeline) and credentials"
        ) from None


def parse_params(pairs: list[str], known: dict) -> dict:
    """``k=v`` strings into pipeline arguments, typed as ``known`` (name -> Parameter,
    ``pipeline_parameters()``) declares them."""
    params = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected NAME=VALUE")
        if name not in known:
            raise ValueError(f"--param {name}: unknown pipeline parameter; known: {sorted(known)}")
        try:
            params[name] = known[name].parse(value)
        except ValueError as error:
            raise ValueError(f"--param {name}: {error}") from None
    return params


def client(host: str, **kwargs):
    import kfp

    return kfp.Client(host=host, **kwargs)


def package(pipeline_yaml: str | None, image: str, directory: str, platform: tuple = ()) -> str:
    """A compiled package: the one given, or the pipeline compiled against ``image``
    with ``platform`` (volumes, secrets as environment) applied to every task."""
    if pipeline_yaml:
        if not os.path.isfile(pipeline_yaml):
            raise FileNotFoundError(f"no compiled pipeline at {pipeline_yaml}")
        if platform:
            raise ValueError(
                "--volume and --secret-env apply when compiling; compile the package with "
                "them (recsys compile --volume ...) instead of passing both"
            )
        return pipeline_yaml
    return compile_pipeline(os.path.join(directory, "pipeline.yaml"), image, platform)


def submit(
    host: str,
    params: dict,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str = "",
    image: str = DEFAULT_IMAGE,
    pipeline_yaml: str | None = None,
    kfp_client=None,
    platform: tuple = (),
) -> dict:
    """One run now; returns its id and the UI link."""
    kfp_client = kfp_client or client(host)
    with tempfile.TemporaryDirectory() as directory:
        result = kfp_client.create_run_from_pipeline_package(
            package(pipeline_yaml, image, directory, platform),
            arguments=params,
            run_name=run_name or None,
            experiment_name=experiment,
        )
    return {"run_id": result.run_id, "url": f"{host.rstrip('/')}/#/runs/details/{result.run_id}"}


def experiment_id(kfp_client, name: str) -> str:
    return kfp_client.create_experiment(name).experiment_id  # gets it when it exists


def schedule_behaviour(catchup: bool, max_concurrency: int, as_of_pinned: bool) -> str:
    """What a recurring run with these settings does, day after day, in words."""
    window = (
        "every run trains on the as_of you pinned"
        if as_of_pinned
        else "each run trains on the window ending at its scheduled time (as_of is KFP's "
        "[[ScheduledTime]]), so a retried or backfilled run sees the same data"
    )
    missed = (
        "catch-up: after a pause (the schedule disabled, the controller down), every "
        "missed day runs, oldest first"
        if catchup
        else "no catch-up: after a pause only the next due time runs; missed days are skipped"
    )
    return "\n".join(
        [
            f"- {window};",
            f"- at most {max_concurrency} run(s) at once: a run due while "
            f"{'that many are' if max_concurrency > 1 else 'one is'} still going waits for a slot;",
            f"- {missed};",
            "- a failed run blocks nothing: it stops at the failing stage (validate's "
            "anomalies, the gate, ...), push never runs, so the version serving stays and is "
            "the champion the next day's run is compared with; that run starts on time.",
        ]
    )


def schedule(
    host: str,
    cron: str,
    params: dict,
    name: str,
    experiment: str = DEFAULT_EXPERIMENT,
    no_catchup: bool = True,
    max_concurrency: int = 1,
    image: str = DEFAULT_IMAGE,
    pipeline_yaml: str | None = None,
    kfp_client=None,
    platform: tuple = (),
) -> dict:
    """A recurring run. ``cron`` has six fields, seconds first, as KFP expects.
    Unless ``params`` sets ``as_of``, each run's data window ends at its scheduled
    time (``SCHEDULED_AS_OF``)."""
    fields = cron.split()
    if len(fields) != 6:
        raise ValueError(
            f"--cron {cron!r}: KFP cron expressions have 6 fields (seconds "
            "first), e.g. '0 0 3 * * *' for 03:00 every day"
        )
    if max_concurrency < 1:
        raise ValueError("--max-concurrency must be at least 1")
    kfp_client = kfp_client or client(host)
    with tempfile.TemporaryDirectory() as directory:
        job = kfp_client.create_recurring_run(
            experiment_id=experiment_id(kfp_client, experiment),
            job_name=name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=no_catchup,
            params={"as_of": SCHEDULED_AS_OF, **params},
            pipeline_package_path=package(pipeline_yaml, image, directory, platform),
        )
    return {"recurring_run_id": job.recurring_run_id, "name": name, "cron": cron}


def list_schedules(host: str, experiment: str | None = None, kfp_client=None) -> list[dict]:
    kfp_client = kfp_client or client(host)
    kwargs = {"experiment_id": experiment_id(kfp_client, experiment)} if experiment else {}
    response = kfp_client.list_recurring_runs(page_size=100, **kwargs)
    return [
        {
            "recurring_run_id": job.recurring_run_id,
            "name": job.display_name,
            "status": job.status,
            "cron": job.trigger.cron_schedule.cron
            if job.trigger and job.trigger.cron_schedule
            else "",
            "max_concurrency": job.max_concurrency,
            "no_catchup": job.no_catchup,
        }
        for job in response.recurring_runs or []
    ]


def disable_schedule(host: str, recurring_run_id: str, kfp_client=None) -> None:
    (kfp_client or client(host)).disable_recurring_run(recurring_run_id)


def delete_schedule(host: str, recurring_run_id: str, kfp_client=None) -> None:
    (kfp_client or client(host)).delete_recurring_run(recurring_run_id)


def format_schedules(schedules: list[dict]) -> str:
    if not schedules:
        return "no recurring runs"
    return "\n".join(json.dumps(s, sort_keys=True, default=str) for s in schedules)
