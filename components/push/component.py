"""KFP shim for push. It always runs; the blessing decides whether anything is
written (KFP's local runner cannot run dsl.If, and the gate belongs to the data)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output


def push(
    blessing: Input[Artifact],
    retrieval_model: Input[Model],
    ranking_model: Input[Model],
    warmup_requests: Input[Artifact],
    user_snapshot: Input[Dataset],
    item_snapshot: Input[Dataset],
    item_embeddings: Input[Dataset],
    query_model: Input[Model],
    candidate_sources: Input[Dataset],
    ingest_metrics: Input[Metrics],
    join_metrics: Input[Metrics],
    retrieval_checkpoint: Input[Model],
    ranking_checkpoint: Input[Model],
    schema_dir: str,
    rerank: str,
    serving_root: str,
    keep_versions: int,
    tf_serving_root: str,
    image: str,
    pipeline_root: str,
    state_root: str,
    push_report: Output[Markdown],
):
    from recsys.components.push.config import PushConfig
    from recsys.components.push.push import push as run_push
    from recsys.core import storage
    from recsys.core.config import config_from
    from recsys.core.contracts import (
        RANKING,
        RETRIEVAL,
        SNAPSHOT_AS_OF,
        SNAPSHOT_CANDIDATE_SOURCES,
        SNAPSHOT_EMBEDDINGS,
        SNAPSHOT_HISTORY_LENGTH,
        SNAPSHOT_ITEMS,
        SNAPSHOT_QUERY_MODEL,
        SNAPSHOT_USERS,
        SNAPSHOT_WATCHED_FROM,
        SNAPSHOT_WATCHED_MAX,
    )
    from recsys.core.progress import log, stage
    from recsys.core.provenance import code_version
    from recsys.core.warm_start import keep_blessed

    with stage("push"):
        config = config_from(PushConfig, locals())
        window = {
            name: ingest_metrics.metadata.get(name)
            for name in ("window_start", "eval_start", "as_of", "span_start")
        }
        report = run_push(
            blessing.path,
            {RETRIEVAL: retrieval_model.path, RANKING: ranking_model.path},
            warmup_requests.path,
            {
                SNAPSHOT_USERS: user_snapshot.path,
                SNAPSHOT_ITEMS: item_snapshot.path,
                SNAPSHOT_EMBEDDINGS: item_embeddings.path,
                SNAPSHOT_QUERY_MODEL: query_model.path,
                SNAPSHOT_CANDIDATE_SOURCES: candidate_sources.path,
            },
            serving_root,
            rerank,
            config,
            provenance={
                "data_window": window,
                "code_version": code_version(),
                "image": image,
                "sources": {RETRIEVAL: retrieval_model.uri, RANKING: ranking_model.uri},
            },
            schema_dir=schema_dir,
            snapshot_meta={  # KFP metrics hold numbers as floats
                SNAPSHOT_AS_OF: int(window["as_of"]),
                SNAPSHOT_HISTORY_LENGTH: int(join_metrics.metadata[SNAPSHOT_HISTORY_LENGTH]),
                SNAPSHOT_WATCHED_MAX: int(join_metrics.metadata[SNAPSHOT_WATCHED_MAX]),
                SNAPSHOT_WATCHED_FROM: "impressions"
                if join_metrics.metadata["watched_from_impressions"]
                else "clicks",
            },
        )
        if report["pushed"] or report.get("noop"):
            # What the next run's warm start finds under the state root.
            kept = keep_blessed(
                state_root or pipeline_root,
                report["version"],
                {RETRIEVAL: retrieval_checkpoint.path, RANKING: ranking_checkpoint.path},
            )
            log("push", f"warm-start checkpoints of version {report['version']}: {kept}")
        push_report.metadata.update(
            {k: v for k, v in report.items() if isinstance(v, (str, int, float, bool))}
        )
        lines = [f"## Push\n\n{report['reason']}\n"]
        lines += [f"- `{name}`: `{path}`" for name, path in report["paths"].items()]
        if report.get("models_config"):
            lines.append(f"- TF Serving config: `{report['models_config']}`")
        if report.get("removed_versions"):
            lines.append(f"- removed old versions: {report['removed_versions']}")
        with storage.open(push_report.path, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        log("push", report["reason"])
