"""KFP shim for push. It always runs; the blessing decides whether anything is
written (KFP's local runner cannot run dsl.If, and the gate belongs to the data)."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output


def push(
    blessing: Input[Artifact],
    retrieval_model: Input[Model],
    ranking_model: Input[Model],
    eval_examples: Input[Dataset],
    user_snapshot: Input[Dataset],
    item_snapshot: Input[Dataset],
    item_embeddings: Input[Dataset],
    rerank: str,
    serving_root: str,
    push_report: Output[Markdown],
):
    from components.push.push import push as run_push
    from recsys.progress import log, stage

    with stage("push"):
        report = run_push(blessing.path,
                          {"retrieval": retrieval_model.path, "ranking": ranking_model.path},
                          eval_examples.path,
                          {"users": user_snapshot.path, "items": item_snapshot.path,
                           "item_embeddings": item_embeddings.path},
                          serving_root, rerank)
        push_report.metadata.update(report)
        lines = [f"## Push\n\n{report['reason']}\n"]
        lines += [f"- `{name}`: `{path}`" for name, path in report["paths"].items()]
        with open(push_report.path, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        log("push", report["reason"])
