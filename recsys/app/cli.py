"""The ``recsys`` command: generate, import, import-movielens, check, parameters, compile, run,
submit, schedule, simulate, recommend, versions, rollback, schema, deploy."""

import argparse
import os
import sys
import time

from recsys.core.limits import MAX_WINDOW_EVENTS

# `recsys import` options of the interactions section, and those it cannot do without.
IMPORT_OPTIONS = ("interactions", "user", "item", "timestamp", "timestamp_unit", "label")
IMPORT_OPTIONS += ("watch_seconds",)
IMPORT_REQUIRED = ("interactions", "user", "item", "timestamp", "label")
# Pipeline parameters `recsys check` takes as options (the data checks' own).
CHECK_PARAMETERS = (
    "as_of",
    "lookback_days",
    "eval_days",
    "schema_dir",
    "max_reject_rate",
    "input_encoding",
    "feature_views",
    "history_length",
    "statistics_root",
    "drift_baseline",
    "anomaly_policy",
)


def _generate(args):
    from recsys.app.generate import generate

    counts = generate(
        args.out,
        users=args.users,
        items=args.items,
        days=args.days,
        seed=args.seed,
        start=args.start,
        impressions_per_user_day=args.impressions_per_user_day,
        drift=args.drift or "",
        drift_day=args.drift_day,
        skew=args.skew or "",
        skew_day=args.skew_day,
    )
    for name, rows in counts.items():
        print(f"{name}: {rows} rows -> {os.path.join(args.out, name)}.parquet")


def _check(args):
    from recsys.app.data_check import check_span
    from recsys.app.local_run import data_config

    # The data directory's recsys.yaml, with the options given here replacing it.
    parameters = data_config(args.data)
    parameters.update(
        {name: getattr(args, name) for name in CHECK_PARAMETERS if getattr(args, name) is not None}
    )
    result = check_span(args.data, args.workdir, parameters)
    counts = result["ingest"]
    print(
        f"ingest: {counts['quarantined']} row(s) quarantined: "
        f"{os.path.join(args.workdir, 'ingest', 'quarantine')}"
    )
    print(result["validate"]["markdown"])
    print(f"report (HTML, renders offline): {result['report']}")


def _import(args):
    from recsys.app import importer
    from recsys.app.local_run import DATA_CONFIG

    if args.preset:
        from recsys.app.movielens import movielens_mapping

        if not args.src:
            raise ValueError("--preset movielens-100k needs --src (the unzipped ml-100k directory)")
        mapping = movielens_mapping(args.src)
    elif args.mapping:
        mapping = importer.load_mapping(args.mapping)
    else:
        given = {key: getattr(args, key) for key in IMPORT_OPTIONS if getattr(args, key)}
        missing = [f"--{key.replace('_', '-')}" for key in IMPORT_REQUIRED if key not in given]
        if missing:
            raise ValueError(
                f"give --mapping FILE, --preset, or the interactions options {missing}"
            )
        given["path"] = given.pop("interactions")
        mapping = {"interactions": given}
    result = importer.import_data(mapping, args.out, args.max_window_events)
    for name, rows in result.counts.items():
        print(f"{name}: {rows} rows -> {os.path.join(args.out, name)}.parquet")
    print("features switched off (the data has nothing for them):")
    for name, reason in result.switched_off.items():
        print(f"  {name}: {reason}")
    print(
        f"window: {result.window}; eval: the last {result.eval_days}, where "
        f"{result.eval_users} users engage who also engaged before"
    )
    print(
        f"schemas and feature registry: {os.path.join(args.out, importer.DATA_SCHEMAS)}; "
        f"pipeline parameters: {os.path.join(args.out, DATA_CONFIG)}"
    )
    print(f"check it: recsys check --data {args.out}; run it: recsys run --data {args.out}")


def _import_movielens(args):
    args.preset, args.mapping = "movielens-100k", None
    args.max_window_events = MAX_WINDOW_EVENTS
    return _import(args)


def _platform(args) -> tuple:
    """The --volume and --secret-env settings every task gets."""
    from recsys.pipelines.kfp_pipeline import SecretEnv, Volume

    return tuple(Volume.parse(text) for text in args.volume) + tuple(
        SecretEnv.parse(text) for text in args.secret_env
    )


def _deploy_kserve(args):
    import dataclasses

    from recsys.app.kserve import KServeDeployment, write_manifests

    # The options left unset take the dataclass' defaults, declared there once.
    deployment = KServeDeployment(
        **{
            field.name: getattr(args, field.name)
            for field in dataclasses.fields(KServeDeployment)
            if getattr(args, field.name, None) is not None
        }
    )
    for path in write_manifests(deployment, args.out):
        print(path)
    print(
        f"apply with: kubectl apply -k {args.out} (after creating the Secret "
        f"{deployment.secret} with keys token and redis-url in namespace "
        f"{deployment.namespace})"
    )


def _compile(args):
    if args.specs:
        from recsys.pipelines.specs import write_specs

        for path in write_specs():
            print(path)
        return
    from recsys.pipelines.kfp_pipeline import compile_pipeline

    print(compile_pipeline(args.out, args.image, _platform(args)))


def _run(args):
    from recsys.app import local_run
    from recsys.app.generate import generate
    from recsys.core.progress import log

    data_root = args.data
    config = {**local_run.data_config(data_root), **local_run.load_config(args.config)}
    if not data_root:
        data_root = os.path.join(args.workdir, "sample_data")
        log("run", f"no --data given: generating the sample into {data_root}")
        generate(data_root)
    try:
        outputs = local_run.run(
            args.workdir,
            data_root,
            config,
            args.image,
            args.verbose,
            fresh_task_processes=args.fresh_task_processes,
        )
    except local_run.RunFailed as error:
        print(f"\nrecsys run FAILED: {error}", file=sys.stderr)
        return 1
    print(local_run.summary(outputs))
    return 0


def _submit(args):
    from recsys.app import kubeflow
    from recsys.pipelines.parameters import pipeline_parameters

    params = kubeflow.parse_params(args.param, pipeline_parameters())
    with kubeflow.api_errors(args.host):
        run = kubeflow.submit(
            args.host,
            params,
            args.experiment,
            args.run_name,
            args.image,
            args.pipeline_yaml,
            platform=_platform(args),
        )
    print(f"submitted run {run['run_id']} to experiment '{args.experiment}': {run['url']}")


def _schedule(args):
    from recsys.app import kubeflow
    from recsys.pipelines.parameters import pipeline_parameters

    with kubeflow.api_errors(args.host):
        if args.list:
            print(kubeflow.format_schedules(kubeflow.list_schedules(args.host, args.experiment)))
            return
        if args.disable:
            kubeflow.disable_schedule(args.host, args.disable)
            print(f"disabled recurring run {args.disable}")
            return
        if args.delete:
            kubeflow.delete_schedule(args.host, args.delete)
            print(f"deleted recurring run {args.delete}")
            return
        if not args.cron:
            raise ValueError(
                "--cron is required to create a recurring run (or pass --list, "
                "--disable ID or --delete ID)"
            )
        params = kubeflow.parse_params(args.param, pipeline_parameters())
        job = kubeflow.schedule(
            args.host,
            args.cron,
            params,
            args.name,
            args.experiment or kubeflow.DEFAULT_EXPERIMENT,
            not args.catchup,
            args.max_concurrency,
            args.image,
            args.pipeline_yaml,
            platform=_platform(args),
        )
        print(
            f"created recurring run {job['recurring_run_id']} ('{job['name']}', cron "
            f"'{job['cron']}', max concurrency {args.max_concurrency}, "
            f"{'catch-up' if args.catchup else 'no catch-up'})"
        )
        print(kubeflow.schedule_behaviour(args.catchup, args.max_concurrency, "as_of" in params))


def _simulate(args):
    from recsys.app import local_run
    from recsys.app.simulate import simulate

    if args.experiment:
        return _simulate_experiment(args)
    result = simulate(
        args.workdir,
        args.days,
        args.drift_day,
        args.drift,
        args.lookback_days,
        args.eval_days,
        args.users,
        args.items,
        args.seed,
        local_run.load_config(args.config),
    )
    for day in result["days"]:
        print(
            f"day {day['day']} (as_of {day['as_of']}): {day['status']}; serving version "
            f"{day['served_version']}"
        )
    print(f"timeline: {os.path.join(result['workdir'], 'timeline.html')} (and timeline.png)")


def _simulate_experiment(args):
    from recsys.app import experiment, local_run
    from recsys.app.ab_simulation import simulate_experiment
    from recsys.serving.experiment import Experiment

    if args.drift_day:
        raise ValueError("--experiment runs on the world as generated: drop --drift-day")
    result = simulate_experiment(
        args.workdir,
        Experiment.load(args.experiment),
        args.days,
        args.lookback_days,
        args.eval_days,
        args.users,
        args.items,
        args.seed,
        local_run.load_config(args.config),
    )
    print(experiment.markdown(result))
    out = os.path.join(os.path.abspath(args.workdir), "experiment")
    print(f"report: {os.path.join(out, 'experiment.html')} (and experiment.json)")


def _experiment_report(args):
    from recsys.app import experiment
    from recsys.serving.experiment import Experiment

    result = experiment.report(
        args.exposures,
        args.impressions,
        Experiment.load(args.experiment) if args.experiment else None,
        args.control or "",
        args.watch_weight,
    )
    print(experiment.markdown(result))
    if args.out:
        experiment.write(result, args.out)
        print(f"written: {args.out}/experiment.html and experiment.json")


def _recommend(args):
    from dataclasses import replace

    import pandas as pd

    from recsys.serving import Context, Funnel, GrpcBackend, RestBackend, ServingLog

    if args.backend != "in-process" and not args.target:
        raise ValueError(
            f"--backend {args.backend} needs --target (grpc: host:8500, rest: http://host:8501)"
        )
    backend = {
        "in-process": lambda: None,
        "grpc": lambda: GrpcBackend(args.target),
        "rest": lambda: RestBackend(args.target),
    }[args.backend]()
    log = ServingLog(args.log_dir) if args.log_dir else None
    funnel = Funnel.from_serving_root(args.serving_root, backend, serving_log=log)
    # The rules pushed with the models, with the options given here replacing theirs.
    overrides = {
        name: getattr(args, name)
        for name in ("k", "max_per_creator", "max_per_category", "mmr_lambda", "freshness_boost")
        if getattr(args, name) is not None
    }
    if args.blocklist is not None:
        overrides["blocklist"] = frozenset(args.blocklist)
    funnel.config = replace(funnel.config, **overrides)
    at = pd.Timestamp(args.at, tz="UTC") if args.at else None
    result = funnel.recommend(args.user_id, Context(at))
    known = "" if result.known_user else " (unknown user: cold start)"
    print(
        f"top {len(result.items)} for {args.user_id}{known}, model version {funnel.version}, "
        f"{args.backend}"
    )
    print(result.items.to_string(index=True, float_format=lambda v: f"{v:.4f}"))
    print("removed before the page: " + ", ".join(f"{k} {v}" for k, v in result.removed.items()))
    print("milliseconds: " + ", ".join(f"{k} {v:.1f}" for k, v in result.milliseconds.items()))
    if log:
        log.close()
        print(f"served features logged under {args.log_dir}")


def _serve(args):
    import logging
    import os

    import uvicorn

    from recsys.serving.experiment import Experiment
    from recsys.serving.exploration import ExplorationConfig
    from recsys.serving.service import Service, ServiceConfig, create_app

    token = os.environ.get(args.token_env, "") if args.token_env else ""
    if args.token_env and not token:
        raise ValueError(f"--token-env {args.token_env}: that environment variable is empty")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        print(
            f"warning: serving on {args.host} without a bearer token: anyone who reaches "
            "the port can ask for recommendations and send events (see --token-env)"
        )
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    config = ServiceConfig(
        serving_root=args.serving_root,
        backend=args.backend,
        feature_store=args.feature_store,
        retrieval=args.retrieval,
        ann_min_items=args.ann_min_items,
        serving_log=args.serving_log or "",
        reload_seconds=args.reload_seconds,
        max_k=args.max_k,
        **({"max_in_flight": args.max_in_flight} if args.max_in_flight is not None else {}),
        token=token,
        exploration=ExplorationConfig(args.explore_share, args.explore_temperature),
        experiment=Experiment.load(args.experiment) if args.experiment else None,
        exposure_log=args.exposure_log or "",
    )
    app = create_app(Service(config))
    print(
        f"recsys serve: http://{args.host}:{args.port} (OpenAPI at /docs), models from "
        f"{args.serving_root}, backend {args.backend}, feature store {args.feature_store}"
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


def _materialize(args):
    from recsys.serving.service import materialize

    report = materialize(args.serving_root, args.feature_store)
    done = "written" if report["materialized"] else "already there"
    print(f"version {report['version']}: {report['users']} users {done} in {args.feature_store}")


def _versions(args):
    from recsys.serving import serving_root as root_

    served = root_.served_versions(args.serving_root)
    committed = root_.committed_versions(args.serving_root)
    if not committed:
        print(f"nothing pushed under {args.serving_root}")
        return
    print(f"{'version':>7}  {'served as':<20} {'content':<12}  {'data until':<16} reason")
    for version in committed:
        record = root_.read_record(args.serving_root, version)
        serving = ", ".join(sorted(name for name, v in served.items() if v == version))
        as_of = (record.get("data_window") or {}).get("as_of")
        until = time.strftime("%Y-%m-%d %H:%M", time.gmtime(as_of)) if as_of else "?"
        print(
            f"{version:>7}  {serving or '-':<20} {record['content_hash'][:12]}  {until:<16} "
            f"{record['blessing']['reason'][:100]}"
        )
    print("\nrecent events:")
    for event in root_.events(args.serving_root)[-args.events :]:
        details = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("kind", "at"))
        print(f"  {event['at']} {event['kind']}: {details}")


def _rollback(args):
    from recsys.core.contracts import MODELS_CONFIG
    from recsys.serving import serving_root as root_

    event = root_.rollback(args.serving_root, args.model, args.to, args.reason)
    if event["from_version"] is None:
        print(
            f"{os.path.join(args.serving_root, MODELS_CONFIG)} was unreadable; rewritten to "
            f"serve version {event['to_version']} of {', '.join(event['recovered_models'])}"
        )
        return
    print(
        f"{args.model}: now serving version {event['to_version']} (was "
        f"{event['from_version']}); {os.path.join(args.serving_root, MODELS_CONFIG)} "
        "updated, TF Serving picks it up at its next config poll"
    )


def _parameters(args):
    from recsys.pipelines.parameters import parameters_markdown

    print(parameters_markdown(), end="")


def _schema_infer(args):
    from recsys.app import schema_tools

    for name, path in schema_tools.infer(args.data, args.out).items():
        print(f"{name}: {path}")
    print(f"review with: recsys schema diff --proposed {args.out}")


def _schema_diff(args):
    from recsys.app import schema_tools

    print(schema_tools.diff(args.proposed, args.curated))


def _choices_help(choices: dict[str, str]) -> str:
    """Each choice and what it does, for a help text (argparse formats help with %)."""
    return "; ".join(f"{k}: {v}" for k, v in choices.items()).replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    from recsys.app.generate import DRIFTS, SKEWS
    from recsys.pipelines.parameters import DEFAULT_IMAGE, pipeline_parameters

    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="write the synthetic sample dataset")
    generate.add_argument("--out", required=True)
    generate.add_argument("--users", type=int, default=2000)
    generate.add_argument("--items", type=int, default=400)
    generate.add_argument("--days", type=int, default=14)
    generate.add_argument("--seed", type=int, default=7)
    generate.add_argument("--start", default="2026-01-05", help="first day (UTC)")
    generate.add_argument("--impressions-per-user-day", type=float, default=4.0)
    generate.add_argument(
        "--drift",
        choices=sorted(DRIFTS),
        help="inject drift from --drift-day on: " + _choices_help(DRIFTS),
    )
    generate.add_argument("--drift-day", type=int, default=0, help="0 = the first day")
    generate.add_argument(
        "--skew",
        choices=sorted(SKEWS),
        help="inject training/serving skew into the serving log from "
        "--skew-day on: " + _choices_help(SKEWS),
    )
    generate.add_argument("--skew-day", type=int, default=0, help="0 = the first day")
    generate.set_defaults(func=_generate)

    check = commands.add_parser(
        "check", help="the data checks of one span (ingest, join, validate), without training"
    )
    check.add_argument("--data", required=True, help="raw data directory")
    check.add_argument(
        "--workdir",
        default="check",
        help="outputs: ingest/quarantine, "
        "validate/, report.html, statistics/ (the drift baselines)",
    )
    known = pipeline_parameters()
    for name in CHECK_PARAMETERS:
        check.add_argument(
            f"--{name.replace('_', '-')}",
            type=known[name].type,
            help=f"{known[name].help} (default: the data directory's "
            f"recsys.yaml, else {known[name].default!r})",
        )
    check.set_defaults(func=_check)

    import_ = commands.add_parser(
        "import",
        help="your interactions log (CSV or Parquet, any column names) as raw tables, "
        "schemas and parameters",
        description="Columns are mapped by --mapping (a YAML file with interactions, "
        "and optional items and users sections: docs in recsys/app/importer.py and the "
        "README) or, for an interactions file alone, by the options below.",
    )
    import_.add_argument("--out", required=True, help="raw data directory to write")
    import_.add_argument("--mapping", help="the mapping YAML (file paths relative to it)")
    import_.add_argument(
        "--preset", choices=["movielens-100k"], help="a known dataset's mapping (needs --src)"
    )
    import_.add_argument("--src", help="the preset's directory (the unzipped ml-100k)")
    import_.add_argument("--interactions", help="interactions file (CSV or Parquet)")
    import_.add_argument("--user", help="its user id column")
    import_.add_argument("--item", help="its item id column")
    import_.add_argument("--timestamp", help="its timestamp column")
    import_.add_argument(
        "--timestamp-unit", help="auto (default), s, ms, us, ns or iso", dest="timestamp_unit"
    )
    import_.add_argument("--label", help="engagement rule, e.g. 'rating >= 4', or a 0/1 column")
    import_.add_argument(
        "--watch-seconds", dest="watch_seconds", help="optional column: seconds engaged"
    )
    import_.add_argument(
        "--max-window-events",
        dest="max_window_events",
        type=int,
        default=MAX_WINDOW_EVENTS,
        help="the proposed window is the newest days holding at most this many events "
        "(default: %(default)s, about two hours of the pipeline on 2 cores)",
    )
    import_.set_defaults(func=_import)

    movielens = commands.add_parser(
        "import-movielens", help="same as: recsys import --preset movielens-100k --src SRC"
    )
    movielens.add_argument("--src", required=True, help="the unzipped ml-100k directory")
    movielens.add_argument("--out", required=True, help="raw data directory to write")
    movielens.set_defaults(func=_import_movielens)

    reference = commands.add_parser(
        "parameters", help="every pipeline parameter: type, default and meaning (Markdown)"
    )
    reference.set_defaults(func=_parameters)

    def volume_option(command):
        command.add_argument(
            "--volume",
            action="append",
            default=[],
            metavar="PVC_NAME:MOUNT_PATH",
            help="mount this PersistentVolumeClaim in every task (repeatable)",
        )
        command.add_argument(
            "--secret-env",
            action="append",
            default=[],
            metavar="SECRET:KEY=ENV_VAR",
            help="set ENV_VAR in every task from this Kubernetes Secret's key, e.g. bucket "
            "credentials (repeatable)",
        )

    deploy = commands.add_parser(
        "deploy", help="write the manifests that serve the pushed models on a cluster"
    )
    targets = deploy.add_subparsers(dest="target", required=True)
    kserve = targets.add_parser(
        "kserve",
        help="KServe InferenceServices for the models (TensorFlow runtime) and recsys serve "
        "as a Deployment calling them, with its Service, probes, autoscaler and budget",
    )
    kserve.add_argument(
        "--serving-root", required=True, help="the root push writes: a bucket the cluster reads"
    )
    kserve.add_argument("--out", required=True, help="a local folder for the manifests")
    kserve.add_argument("--namespace")
    kserve.add_argument("--name", help="prefix of every object's name")
    kserve.add_argument(
        "--image", help=f"the project's image (recsys serve; default {DEFAULT_IMAGE})"
    )
    kserve.add_argument(
        "--secret",
        help="the Secret with keys token (the bearer token) and redis-url",
    )
    kserve.add_argument(
        "--service-account",
        help="the service account whose credentials read the bucket (KServe's storage "
        "initializer and recsys serve); default: the namespace's",
    )
    kserve.add_argument(
        "--deployment-mode",
        choices=["Serverless", "RawDeployment"],
        help="KServe's mode: Serverless (Knative; canaries; the default) or RawDeployment",
    )
    kserve.add_argument(
        "--canary-percent",
        type=int,
        help="share of traffic the new revision takes (canaryTrafficPercent); 0 = all at once",
    )
    kserve.add_argument("--min-replicas", type=int, help="of recsys serve")
    kserve.add_argument("--max-replicas", type=int, help="of recsys serve")
    kserve.set_defaults(func=_deploy_kserve)

    compile_ = commands.add_parser("compile", help="write the KFP v2 pipeline YAML")
    compile_.add_argument("--out", default="pipeline.yaml")
    compile_.add_argument(
        "--specs",
        action="store_true",
        help="instead, refresh the checked-in specifications of this checkout: "
        "pipelines/pipeline.yaml and components/<stage>/component.yaml with their READMEs "
        "(the release image, no code version; --out, --image and the platform options "
        "do not apply)",
    )
    compile_.add_argument("--image", default=DEFAULT_IMAGE)
    volume_option(compile_)
    compile_.set_defaults(func=_compile)

    run = commands.add_parser("run", help="compile, then run the compiled YAML locally")
    run.add_argument("--data", help="raw data directory (default: generate the sample)")
    run.add_argument(
        "--workdir", default="work", help="outputs: runs/<run id>/, pipeline_root/, serving/"
    )
    run.add_argument(
        "--config",
        help="YAML file of pipeline parameters (over the data "
        "directory's recsys.yaml, if it has one)",
    )
    run.add_argument("--image", default=DEFAULT_IMAGE)
    run.add_argument("--verbose", action="store_true", help="stream every task's full log")
    run.add_argument(
        "--fresh-task-processes",
        action="store_true",
        help="start each task in a new interpreter that imports its libraries (KFP's "
        "default; slower) instead of forking it from one that has",
    )
    run.set_defaults(func=_run)

    def kubeflow_options(command):
        command.add_argument(
            "--host", required=True, help="the KFP API, e.g. https://kubeflow.example.com/pipeline"
        )
        command.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="a pipeline parameter (repeatable), e.g. data_root=/data",
        )
        command.add_argument(
            "--image",
            default=DEFAULT_IMAGE,
            help="the image every stage runs in (compiled in as the "
            "default of the image parameter)",
        )
        command.add_argument(
            "--pipeline-yaml", help="submit this compiled package instead of compiling one"
        )
        volume_option(command)

    submit = commands.add_parser("submit", help="run the pipeline once on Kubeflow")
    kubeflow_options(submit)
    submit.add_argument("--experiment", default="recsys")
    submit.add_argument("--run-name", default="")
    submit.set_defaults(func=_submit)

    schedule = commands.add_parser(
        "schedule", help="create, list, disable or delete recurring runs on Kubeflow"
    )
    kubeflow_options(schedule)
    schedule.add_argument("--cron", help='six fields, seconds first: "0 0 3 * * *" = 03:00 daily')
    schedule.add_argument("--name", default="recsys-daily", help="the recurring run's name")
    schedule.add_argument("--experiment", help="default: recsys (with --list: all experiments)")
    schedule.add_argument(
        "--catchup",
        action="store_true",
        help="run every missed interval after a pause (default: only the latest)",
    )
    schedule.add_argument("--no-catchup", dest="catchup", action="store_false")
    schedule.add_argument("--max-concurrency", type=int, default=1)
    manage = schedule.add_mutually_exclusive_group()
    manage.add_argument("--list", action="store_true", help="list recurring runs")
    manage.add_argument("--disable", metavar="ID", help="disable a recurring run")
    manage.add_argument("--delete", metavar="ID", help="delete a recurring run")
    schedule.set_defaults(func=_schedule)

    simulate = commands.add_parser(
        "simulate",
        help="N consecutive daily retrains locally on synthetic data, with a timeline report",
    )
    simulate.add_argument("--days", type=int, required=True)
    simulate.add_argument(
        "--drift-day",
        type=int,
        default=0,
        help="inject drift from this simulated day on (1..days; 0 = none)",
    )
    simulate.add_argument("--drift", choices=sorted(DRIFTS), default="category")
    simulate.add_argument("--workdir", default="simulation")
    simulate.add_argument("--lookback-days", type=int, default=14)
    simulate.add_argument("--eval-days", type=int, default=3)
    simulate.add_argument("--users", type=int, default=2000)
    simulate.add_argument("--items", type=int, default=400)
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--config", help="YAML file of pipeline parameters for every day")
    simulate.add_argument(
        "--experiment",
        help="instead of daily retrains: train once, then run this A/B test file for "
        "--days days, users responding as the world's ground truth draws it",
    )
    simulate.set_defaults(func=_simulate)

    experiment = commands.add_parser("experiment", help="A/B test results")
    experiment_commands = experiment.add_subparsers(dest="experiment_command", required=True)
    report = experiment_commands.add_parser(
        "report", help="per-arm engagement with intervals and the lift over the control"
    )
    report.add_argument("--exposures", required=True, help="the exposure log directory")
    report.add_argument(
        "--impressions",
        required=True,
        help="a data root (its impressions table) or a directory of impression Parquet files",
    )
    report.add_argument("--experiment", help="the experiment file (for the sample-ratio check)")
    report.add_argument("--control", help="the control arm (default: the first)")
    report.add_argument(
        "--watch-weight",
        type=float,
        default=1.0,
        help="value = clicks + this x watched minutes (the ranker's score_watch_weight)",
    )
    report.add_argument("--out", help="write experiment.html and experiment.json here")
    report.set_defaults(func=_experiment_report)

    recommend = commands.add_parser("recommend", help="top items for a user from pushed models")
    recommend.add_argument("--serving-root", required=True)
    recommend.add_argument("--user-id", required=True)
    recommend.add_argument("--k", type=int, help="page length (default: the pushed rules')")
    recommend.add_argument("--at", help="request time (UTC), default now")
    recommend.add_argument(
        "--backend",
        choices=["in-process", "grpc", "rest"],
        default="in-process",
        help="where the models run (default: the "
        "pushed SavedModels in this process; grpc/rest: TF Serving)",
    )
    recommend.add_argument(
        "--target", help="TF Serving address: host:8500 (grpc) or http://host:8501 (rest)"
    )
    # Re-ranking rules: unset options keep the rules pushed with the models.
    recommend.add_argument("--max-per-creator", type=int, help="0 = no cap")
    recommend.add_argument("--max-per-category", type=int, help="0 = no cap")
    recommend.add_argument(
        "--mmr-lambda", type=float, help="1 = relevance only; lower = more diverse"
    )
    recommend.add_argument("--freshness-boost", type=float)
    recommend.add_argument("--blocklist", nargs="*", help="item ids never to recommend")
    recommend.add_argument("--log-dir", help="append the served features to this serving log")
    recommend.set_defaults(func=_recommend)

    serve = commands.add_parser(
        "serve",
        help="the recommendation service: an HTTP API over the served models, "
        "hot-reloading new versions",
    )
    serve.add_argument("--serving-root", required=True, help="the root push writes")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default loopback only)"
    )
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--backend",
        default="in-process",
        help="where the models run: in-process (default), grpc:HOST:8500 or "
        "rest:http://HOST:8501 (TF Serving reading the same root's models.config), or "
        "kserve-v1:retrieval=URL,ranking=URL (KServe InferenceServices, each URL ending "
        "/v1/models/<its name>; recsys deploy kserve writes it) or kserve-v2:... (KServe's "
        "v2 protocol, the Open Inference Protocol, each URL ending /v2/models/<its name>)",
    )
    serve.add_argument(
        "--feature-store",
        default="embedded",
        help="embedded (the pushed snapshot in memory, default) or a Redis URL, "
        "redis://HOST:6379/0 (materialized once per version, shared by replicas)",
    )
    serve.add_argument(
        "--retrieval",
        choices=["auto", "index", "model"],
        default="auto",
        help="index: query tower + item index (exact, or HNSW from --ann-min-items "
        "items); model: the retrieval model's top-K; auto: index when pushed (default)",
    )
    serve.add_argument("--ann-min-items", type=int, default=500_000)
    serve.add_argument("--serving-log", help="write the served features here (ingest's layout)")
    serve.add_argument("--reload-seconds", type=float, default=2.0, help="models.config poll")
    serve.add_argument("--max-k", type=int, default=100, help="largest page a request may ask")
    serve.add_argument(
        "--max-in-flight",
        type=int,
        help="requests in progress at once; past it a request gets 503 with Retry-After "
        "at once instead of queueing (counted as recsys_rejected_total in /metrics)",
    )
    serve.add_argument(
        "--explore-share",
        type=float,
        default=0.0,
        help="share of requests whose last slot shows an item drawn by softmax over the "
        "final scores (each item's propensity is in the response); default 0: off",
    )
    serve.add_argument(
        "--explore-temperature", type=float, default=1.0, help="softmax temperature (score units)"
    )
    serve.add_argument(
        "--experiment",
        help="an A/B test file (YAML): arms of funnel settings, users split by a stable "
        "hash (README, 'Experiments')",
    )
    serve.add_argument(
        "--exposure-log",
        help="write what each request showed here: item, position, propensity, arm "
        "(what `recsys experiment report` reads)",
    )
    serve.add_argument(
        "--token-env",
        help="name of an environment variable holding a bearer token /v1/* requests "
        "must send (never the token itself: command lines are visible to others)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.set_defaults(func=_serve)

    materialize = commands.add_parser(
        "materialize",
        help="write the served version's user features into the online store (after a push)",
    )
    materialize.add_argument("--serving-root", required=True)
    materialize.add_argument("--feature-store", required=True, help="redis://HOST:6379/0")
    materialize.set_defaults(func=_materialize)

    versions = commands.add_parser(
        "versions", help="pushed versions, which are served, and recent pushes and rollbacks"
    )
    versions.add_argument("--serving-root", required=True)
    versions.add_argument("--events", type=int, default=10, help="how many recent events")
    versions.set_defaults(func=_versions)

    rollback = commands.add_parser(
        "rollback", help="serve an earlier pushed version of a model (atomically, recorded)"
    )
    rollback.add_argument("--serving-root", required=True)
    rollback.add_argument("--model", required=True, help="e.g. retrieval or ranking")
    rollback.add_argument(
        "--to", type=int, help="version to serve (default: the newest one below the served version)"
    )
    rollback.add_argument("--reason", default="", help="recorded with the rollback")
    rollback.set_defaults(func=_rollback)

    schema = commands.add_parser("schema", help="propose a schema from data; diff it")
    schema_commands = schema.add_subparsers(dest="schema_command", required=True)
    infer = schema_commands.add_parser("infer", help="propose schemas from raw data statistics")
    infer.add_argument("--data", required=True, help="raw data directory")
    infer.add_argument("--out", default="proposed_schemas")
    infer.set_defaults(func=_schema_infer)
    schema_diff = schema_commands.add_parser("diff", help="proposed vs curated, per feature")
    schema_diff.add_argument("--proposed", default="proposed_schemas")
    schema_diff.add_argument("--curated", default="", help="default: the packaged schemas/")
    schema_diff.set_defaults(func=_schema_diff)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, OSError) as error:  # bad input: say what, not a traceback
        print(f"recsys {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
