"""The release gate end to end on real models: a degraded candidate is refused with the
failing checks named, a candidate worse than the champion on one slice only is
refused, a better one is pushed; missing metrics and an unscorable champion fail
closed; infra validation catches what TF Serving would choke on."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from recsys.components.evaluate import gate
from recsys.components.evaluate.config import Thresholds
from recsys.components.evaluate.data import EvalData, TrainingClicks
from recsys.components.evaluate.evaluate import CandidateModels, evaluate
from recsys.components.evaluate.retrieval import RetrievalTask
from recsys.components.evaluate.slices import Slices
from recsys.components.infra_validate.config import Budgets
from recsys.components.infra_validate.infra_validate import (
    infra_validate,
    probe_models,
    probe_spec,
)
from recsys.core.contracts import MODEL_OUTPUTS
from recsys.core.features import load_registry
from recsys.core.requests import serving_contract
from recsys.core.tables import read_dataset, read_dataset_table, write_dataset
from recsys.serving import serving_root as root_
from recsys.serving.rerank import RerankConfig
from tests.conftest import built_once, push_stages

THRESHOLDS = dict(recall_k=20, min_slice_size=5)


def _evaluate(
    stages,
    models: dict,
    infra_path: str,
    serving_root: str,
    blessing: str,
    data_root: str = "",
    **thresholds,
) -> dict:
    """The evaluation's blessing; with ``data_root`` (the tiny data), also off policy
    (the eval impressions' propensities) and in truth (its world)."""
    paths = stages["paths"]
    return evaluate(
        paths["train_examples"],
        paths["eval_examples"],
        CandidateModels(
            models["retrieval_model"],
            models["query_model"],
            models["item_embeddings"],
            models["ranking_model"],
            models.get("candidate_sources", ""),  # the shuffled models serve the two-tower's
        ),
        paths["eval_item_snapshot"],
        infra_path,
        Thresholds(**{**THRESHOLDS, **thresholds}),
        RerankConfig(k=10),
        blessing,
        serving_root,
        eval_events_dir=paths["eval_events"] if data_root else "",
        data_root=data_root,
    ).blessing


def _failed(blessing: dict) -> list[tuple[str, str, str]]:
    return [
        (c["kind"], c["metric"], c["slice"]) for c in blessing["checks"] if c["status"] == "FAIL"
    ]


# The tests of the shuffled models run on one worker, one after another: the other
# worker would wait for the models to be built (built_once) instead of working.
SHUFFLED_GROUP = pytest.mark.xdist_group("shuffled")


@pytest.fixture(scope="session")
def shuffled(request, stages, tmp_path_factory) -> dict:
    """Both models trained on shuffled click labels (same features, same epochs):
    what a labelling bug upstream would produce. Exported and infra-validated."""
    return built_once(
        request, tmp_path_factory, "shuffled", lambda root: _train_shuffled(stages, root)
    )


def _train_shuffled(stages, root) -> dict:
    from recsys.components.train_ranking import train_ranking
    from recsys.components.train_ranking.config import RankingConfig
    from recsys.components.train_retrieval import train_retrieval
    from recsys.components.train_retrieval.config import RetrievalConfig

    paths = stages["paths"]
    table = read_dataset_table(paths["transformed_train"])
    permutation = np.random.default_rng(0).permutation(table.num_rows)
    for label in ("clicked", "watch_seconds"):
        table = table.set_column(
            table.schema.get_field_index(label), label, table.column(label).take(permutation)
        )
    transformed = str(root / "transformed_train")
    write_dataset(table, transformed)
    models = {
        name: str(root / name)
        for name in ("retrieval_model", "query_model", "item_embeddings", "ranking_model")
    }
    config = RetrievalConfig(epochs=3, batch_size=256, top_k=50, early_stopping_patience=0)
    model, _ = train_retrieval.train(
        transformed, paths["transformed_eval"], paths["transform_graph"], config
    )
    train_retrieval.export(
        model,
        paths["transform_graph"],
        paths["item_snapshot"],
        config,
        models["retrieval_model"],
        models["query_model"],
        models["item_embeddings"],
    )
    model, _ = train_ranking.train(
        transformed,
        paths["transformed_eval"],
        paths["transform_graph"],
        RankingConfig(epochs=2, batch_size=512),
    )
    train_ranking.export(model, paths["transform_graph"], models["ranking_model"])
    models["warmup_requests"] = str(root / "warmup")
    models["infra_validation"] = str(root / "infra.json")
    infra_validate(
        {"retrieval": models["retrieval_model"], "ranking": models["ranking_model"]},
        paths["eval_examples"],
        models["warmup_requests"],
        models["infra_validation"],
    )
    return models


def _stage_models(stages) -> dict:
    return {
        name: stages["paths"][name]
        for name in (
            "retrieval_model",
            "query_model",
            "item_embeddings",
            "ranking_model",
            "candidate_sources",
        )
    }


@SHUFFLED_GROUP
def test_a_degraded_candidate_is_refused_with_the_failing_checks_named(stages, shuffled, tmp_path):
    serving_root = str(tmp_path / "serving")
    assert push_stages(stages, serving_root)["version"] == 1  # the good model serves
    blessing_path = str(tmp_path / "blessing.json")
    blessing = _evaluate(
        stages, shuffled, shuffled["infra_validation"], serving_root, blessing_path
    )
    assert blessing["blessed"] is False
    failed = _failed(blessing)
    # Trained on shuffled clicks, retrieval still learns which items were shown (so it
    # can beat popularity) and a ranker's random start can order by a strong feature
    # by chance (AUC ~0.6 here): the value thresholds alone may pass. The comparison
    # with the model serving now, on the same data, refuses it.
    assert ("change", "served Recall@20", "all") in failed
    assert ("change", "ranking AUC", "all") in failed
    auc = next(
        c
        for c in blessing["checks"]
        if c["kind"] == "change" and c["metric"] == "ranking AUC" and c["slice"] == "all"
    )
    assert auc["candidate"] < auc["baseline"] - 0.1
    assert blessing["reason"].startswith(f"NOT blessed: {len(failed)} of ")
    assert "ranking AUC" in blessing["reason"] and "vs serving version 1" in blessing["reason"]
    # Failing checks come first in the blessing (and so in the run summary's table).
    statuses = [c["status"] for c in blessing["checks"]]
    assert statuses == sorted(statuses, key=["FAIL", "skipped", "pass"].index)
    # ...and nothing reaches the serving root.
    report = push_stages(
        stages,
        serving_root,
        blessing=blessing_path,
        models={"retrieval": shuffled["retrieval_model"], "ranking": shuffled["ranking_model"]},
    )
    assert report["pushed"] is False and report["reason"].startswith("not pushed: NOT blessed")
    assert root_.served_versions(serving_root) == {"ranking": 1, "retrieval": 1}


@SHUFFLED_GROUP
def test_a_better_candidate_is_blessed_against_the_champion_and_pushed(stages, shuffled, tmp_path):
    from recsys.components.push.push import push

    # The champion: a bad release that once got through (its ranker trained on
    # shuffled labels, its retrieval list served upside down): worse in every slice.
    serving_root = str(tmp_path / "serving")
    seeded = tmp_path / "seed_blessing.json"
    seeded.write_text(json.dumps({"blessed": True, "reason": "seeded by the test"}))
    upside_down = Reordered(stages["paths"]["retrieval_model"], reverse=True).save(
        str(tmp_path / "upside_down")
    )
    push(
        str(seeded),
        {"retrieval": upside_down, "ranking": shuffled["ranking_model"]},
        shuffled["warmup_requests"],
        {"users": stages["paths"]["user_snapshot"], "items": stages["paths"]["item_snapshot"]},
        serving_root,
    )
    blessing_path = str(tmp_path / "blessing.json")
    blessing = _evaluate(
        stages,
        _stage_models(stages),
        stages["paths"]["infra_validation"],
        serving_root,
        blessing_path,
    )
    assert blessing["blessed"] is True, blessing["reason"]
    assert "compared with serving version ranking 1, retrieval 1" in blessing["reason"]
    change = [c for c in blessing["checks"] if c["kind"] == "change"]
    assert change and all(c["baseline_name"] == "serving version 1" for c in change)
    overall = {c["metric"]: c for c in change if c["slice"] == "all"}
    assert overall["ranking AUC"]["candidate"] > overall["ranking AUC"]["baseline"] + 0.1
    report = push_stages(stages, serving_root, blessing=blessing_path)
    assert report["pushed"] and report["version"] == 2
    assert root_.served_versions(serving_root) == {"ranking": 2, "retrieval": 2}


class Reordered(tf.Module):
    """A retrieval model that returns the champion's top-K list reordered: ``demoted``
    items moved to the end (worse for that category's users, nearly the same
    overall), or the whole list reversed (worse for everyone)."""

    def __init__(self, champion_dir: str, demoted: np.ndarray | None = None, reverse: bool = False):
        super().__init__()
        self.champion = tf.saved_model.load(champion_dir)
        demoted = np.array([""]) if demoted is None else demoted
        self.demoted = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(demoted.astype(str)), tf.ones(len(demoted))
            ),
            default_value=0.0,
        )
        self.direction = -1.0 if reverse else 1.0
        signature = self.champion.signatures["serving_default"].structured_input_signature[1]
        self.serve = tf.function(self._serve, input_signature=[signature])

    def _serve(self, features):
        served = self.champion.signatures["serving_default"](**features)
        ids, scores = served["item_ids"], served["scores"]
        rank = self.direction * tf.cast(tf.range(tf.shape(ids)[1])[None, :], tf.float32)
        order = tf.argsort(self.demoted.lookup(ids) * 1e6 + rank, axis=1)
        return {
            "item_ids": tf.gather(ids, order, batch_dims=1),
            "scores": tf.gather(scores, order, batch_dims=1),
        }

    def save(self, path: str) -> str:
        tf.saved_model.save(self, path, signatures={"serving_default": self.serve})
        return path


@SHUFFLED_GROUP
def test_the_estimated_value_gate_compares_funnels_off_policy(
    stages, shuffled, tiny_data, tmp_path
):
    """With compare_estimated_value, the candidate funnel's doubly robust value per
    request must hold up against the serving version's, estimated on the same logged
    requests: a ranker trained on shuffled clicks fails it, the same models pass."""
    metric = "funnel value per request (DR)"
    serving_root = str(tmp_path / "serving")
    assert push_stages(stages, serving_root)["version"] == 1
    worse = _evaluate(
        stages,
        shuffled,
        shuffled["infra_validation"],
        serving_root,
        str(tmp_path / "worse.json"),
        tiny_data,
        compare_estimated_value=True,
    )
    (check,) = [c for c in worse["checks"] if c["metric"] == metric]
    assert check["passed"] is False and check["candidate"] < 0.98 * check["baseline"]
    funnel = worse["metrics"]["funnel"]
    # The estimate agrees with the truth: the shuffled funnel is truly worse.
    assert funnel["funnel_true_value"] < funnel["champion_funnel_true_value"]
    same = _evaluate(
        stages,
        _stage_models(stages),
        stages["paths"]["infra_validation"],
        serving_root,
        str(tmp_path / "same.json"),
        tiny_data,
        compare_estimated_value=True,
    )
    (check,) = [c for c in same["checks"] if c["metric"] == metric]
    assert check["passed"] is True and check["candidate"] == pytest.approx(check["baseline"])
    # Without propensities the gate cannot judge, so it fails closed.
    blind = _evaluate(
        stages,
        _stage_models(stages),
        stages["paths"]["infra_validation"],
        serving_root,
        str(tmp_path / "blind.json"),
        compare_estimated_value=True,
    )
    (check,) = [c for c in blind["checks"] if c["metric"] == metric]
    assert check["passed"] is False and "no propensity column" in check["note"]


def test_a_candidate_worse_on_one_slice_only_is_refused(stages, tmp_path):
    paths = stages["paths"]
    serving_root = str(tmp_path / "serving")
    push_stages(stages, serving_root)
    category = load_registry().role("category")
    evaluation = EvalData.read(paths["eval_examples"], category)
    task = RetrievalTask.of(TrainingClicks.read(paths["train_examples"]), evaluation)
    # The third most shown category: a slice of its own, a small part of the others.
    demoted = Slices.of(
        task.users,
        task.train_clicks,
        evaluation.impressions,
        top_categories=3,
        category=category,
    ).categories[2]
    items = read_dataset(paths["item_snapshot"])
    demoting = Reordered(
        paths["retrieval_model"], items.loc[items["category"] == demoted, "item_id"].to_numpy()
    )
    candidate = {
        **_stage_models(stages),
        "retrieval_model": demoting.save(str(tmp_path / "demoting")),
    }
    infra = infra_validate(
        {"retrieval": candidate["retrieval_model"], "ranking": candidate["ranking_model"]},
        paths["eval_examples"],
        str(tmp_path / "warmup"),
        str(tmp_path / "infra.json"),
    )
    assert infra["passed"], infra  # a valid serving model: only its quality differs

    # Generous tolerances overall and per slice: only a collapse fails.
    blessing = _evaluate(
        stages,
        candidate,
        str(tmp_path / "infra.json"),
        serving_root,
        str(tmp_path / "blessing.json"),
        max_regression=0.2,
        max_slice_regression=0.2,
    )
    assert blessing["blessed"] is False
    assert _failed(blessing) == [("change", "served Recall@20", f"category={demoted}")]
    slice_check = blessing["checks"][0]
    assert slice_check["candidate"] < 0.5 * slice_check["baseline"]
    assert f"served Recall@20 [category={demoted}]" in blessing["reason"]
    overall = [c for c in blessing["checks"] if c["kind"] == "change" and c["slice"] == "all"]
    assert all(c["status"] == "pass" for c in overall)


def test_an_unscorable_champion_fails_closed_unless_comparison_is_off(stages, tmp_path):
    serving_root = str(tmp_path / "serving")
    push_stages(stages, serving_root)
    # Injected fault: the served ranking version's graph is unreadable.
    with open(os.path.join(serving_root, "ranking", "1", "saved_model.pb"), "wb") as handle:
        handle.write(b"not a SavedModel")
    blessing = _evaluate(
        stages,
        _stage_models(stages),
        stages["paths"]["infra_validation"],
        serving_root,
        str(tmp_path / "blessing.json"),
    )
    assert blessing["blessed"] is False
    assert _failed(blessing) == [("change", "champion comparison", "all")]
    assert (
        "cannot be scored" in blessing["reason"] and "compare_with_champion" in blessing["reason"]
    )
    allowed = _evaluate(
        stages,
        _stage_models(stages),
        stages["paths"]["infra_validation"],
        serving_root,
        str(tmp_path / "blessing2.json"),
        compare_with_champion=False,
    )
    assert allowed["blessed"] is True
    assert (
        "not compared with the serving model: compare_with_champion is false" in allowed["reason"]
    )


def test_missing_values_fail_closed():
    thresholds = Thresholds(recall_k=50)
    checks = gate.value_checks(
        {"recall_at_50": 0.4}, {"auc": float("nan"), "normalized_entropy": 0.8}, thresholds
    )
    failed = {c.metric: c for c in checks if c.passed is False}
    # No popularity baseline, a NaN AUC, no calibration ratio: each fails, saying why.
    assert set(failed) == {"retrieval Recall@50", "ranking AUC", "ranking calibration ratio"}
    assert all("missing" in c.note for c in failed.values())
    assert gate.infra_checks({"models": {}})[0].passed is False
    change = gate.change_checks(
        {"ranking AUC": {"all": 0.8, "new_users": 0.7}},
        {"ranking AUC": {"all": 0.8}},
        {"ranking AUC": {"all": 100, "new_users": 100}},
        3,
        thresholds,
    )
    assert [c.passed for c in change] == [True, False]  # the champion's slice value is missing
    blessing = gate.decide(checks + change, thresholds, "compared with serving version 3")
    assert blessing["blessed"] is False
    assert blessing["reason"].startswith("NOT blessed: 4 of 7 checks failed")
    assert not math.isnan(blessing["checks"][-1]["candidate"])  # passes last


def test_small_slices_are_listed_as_skipped_not_judged():
    change = gate.change_checks(
        {"ranking AUC": {"all": 0.8, "category=x": 0.1}},
        {"ranking AUC": {"all": 0.8, "category=x": 0.9}},
        {"ranking AUC": {"all": 500, "category=x": 4}},
        2,
        Thresholds(min_slice_size=30),
    )
    assert [c.status for c in change] == ["pass", "skipped"]
    assert "4 positives < min_slice_size 30" in change[1].note
    blessing = gate.decide(change, Thresholds(), "compared with serving version 2")
    assert blessing["blessed"] and "1 slice checks skipped as too small" in blessing["reason"]


# --- infra validation with injected faults ------------------------------------------


class FakeRanker(tf.Module):
    """Takes the ranking contract's inputs; returns what ``outputs`` computes."""

    def __init__(self, contract: dict, outputs, user_id_dtype=tf.string):
        super().__init__()
        signature = {
            name: tf.TensorSpec(
                [None] * rank, user_id_dtype if name == "user_id" else tf.as_dtype(dtype), name=name
            )
            for name, (dtype, rank) in contract.items()
        }
        self.serve = tf.function(lambda features: outputs(features), input_signature=[signature])


def test_infra_validation_passes_the_trained_models(stages):
    infra = stages["infra"]
    assert infra["passed"], infra
    for name in ("retrieval", "ranking"):
        result = infra["models"][name]
        checks = {c["check"]: c["passed"] for c in result["checks"]}
        assert checks == {
            "standard ops": True,
            "load time": True,
            "signature": True,
            "warmup requests": True,
            "outputs": True,
            "latency": True,
        }
        assert result["latency_ms"]["requests"] == 16 * 10
        assert os.path.isfile(
            os.path.join(stages["paths"]["warmup_requests"], name, "tf_serving_warmup_requests")
        )


def test_a_busy_machine_does_not_decide_the_latency_check(stages):
    """The gate's latency is CPU time: with the cores saturated by busy processes the
    trained ranker passes a budget set at three times its idle p99, as it does idle
    (the wall clock, reported beside it, is what the load inflates)."""
    contract = serving_contract("ranking", load_registry())
    model = stages["paths"]["ranking_model"]
    warmup = os.path.join(
        stages["paths"]["warmup_requests"], "ranking", "tf_serving_warmup_requests"
    )
    idle = stages["infra"]["models"]["ranking"]  # probed by the stage, with default budgets
    budget = Budgets(max_request_ms=3 * idle["latency_ms"]["p99"])
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count())
    ]
    try:
        (busy,) = probe_models(
            [probe_spec(model, warmup, contract, MODEL_OUTPUTS["ranking"], budget)]
        )
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    assert busy["passed"], busy["checks"]
    assert busy["wall_clock_ms"]["requests"] == busy["latency_ms"]["requests"] == 160
    assert busy["load_average"] > 0 and busy["cores"] == os.cpu_count()


def test_infra_validation_names_what_tf_serving_would_choke_on(stages, tmp_path):
    contract = serving_contract("ranking", load_registry())
    warmup = os.path.join(
        stages["paths"]["warmup_requests"], "ranking", "tf_serving_warmup_requests"
    )

    def rows(features):
        return tf.ones_like(features["item_ctr_7d"])

    def save(name, module):
        path = str(tmp_path / name)
        tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
        return path

    nan = save(
        "nan",
        FakeRanker(
            contract,
            lambda f: {
                "click_probability": rows(f) * float("nan"),
                "expected_watch_seconds": rows(f),
                "score": rows(f),
            },
        ),
    )
    wrong_dtype = save(
        "dtype",
        FakeRanker(
            contract,
            lambda f: {
                "click_probability": rows(f) * 0.5,
                "expected_watch_seconds": rows(f),
                "score": rows(f),
            },
            user_id_dtype=tf.int64,
        ),
    )
    out_of_range = save(
        "range",
        FakeRanker(
            contract,
            lambda f: {
                "click_probability": rows(f) * 3.0,
                "expected_watch_seconds": rows(f),
                "score": rows(f),
            },
        ),
    )
    truncated = str(tmp_path / "truncated")
    shutil.copytree(stages["paths"]["ranking_model"], truncated)
    os.remove(os.path.join(truncated, "saved_model.pb"))

    def spec(model_dir, budgets=Budgets()):
        return probe_spec(model_dir, warmup, contract, MODEL_OUTPUTS["ranking"], budgets)

    # All five in one probe process, as infra_validate probes its models.
    results = probe_models(
        [
            spec(nan),
            spec(wrong_dtype),
            spec(out_of_range),
            spec(truncated),
            spec(stages["paths"]["ranking_model"], Budgets(max_request_ms=1e-6)),
        ]
    )
    assert not any(result["passed"] for result in results)
    nan, wrong_dtype, out_of_range, truncated, slow = (
        {c["check"]: c["detail"] for c in result["checks"] if not c["passed"]} for result in results
    )
    assert "'click_probability' has 1 non-finite value(s)" in nan["outputs"]
    assert (
        "input 'user_id' is int64 rank 1, the serving contract says string rank 1"
        in wrong_dtype["signature"]
    )
    assert "outside [0.0, 1.0]" in out_of_range["outputs"]
    assert "cannot read saved_model.pb" in truncated["loads"]
    assert list(slow) == ["latency"] and "budget 1e-06 ms" in slow["latency"]
    assert "of CPU time" in slow["latency"] and "at load average" in slow["latency"]


# A stand-in for probe.py (injected fault): reports each model as passed, except
# that it dies of SIGSEGV on a model named "crash" and sleeps on one named "hang".
# Every start appends a line to the file named by PROBE_STARTS.
FAULTY_PROBE = """
import json, os, signal, sys, time
with open(os.environ["PROBE_STARTS"], "a") as starts:
    starts.write("started\\n")
for spec in json.load(sys.stdin):
    if spec["model_dir"] == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if spec["model_dir"] == "hang":
        time.sleep(600)
    print(json.dumps({"model_dir": spec["model_dir"], "passed": True, "checks": []}), flush=True)
"""


def test_a_model_that_kills_the_probe_fails_alone(tmp_path, monkeypatch):
    """The models share one probe process: the one it died or hung on fails with the
    reason, and the models after it are still probed, in a new process."""
    from recsys.components.infra_validate import infra_validate as module

    script = tmp_path / "probe.py"
    script.write_text(FAULTY_PROBE)
    starts = tmp_path / "starts"
    monkeypatch.setattr(module, "PROBE", str(script))
    monkeypatch.setattr(module, "PROBE_GRACE_SECONDS", 5)
    monkeypatch.setenv("PROBE_STARTS", str(starts))
    names = ["first", "crash", "third", "hang", "fifth"]
    specs = [{"model_dir": name, "max_load_seconds": 1.0} for name in names]

    results = probe_models(specs)

    assert [r["model_dir"] for r in results] == names
    assert [r["passed"] for r in results] == [True, False, True, False, True]
    (crashed,) = results[1]["checks"]
    assert crashed["check"] == "responds"
    assert crashed["detail"].startswith(f"the probe process exited with {-signal.SIGSEGV}")
    (hung,) = results[3]["checks"]
    # Its process (third, hang, fifth) had their load budgets and the grace: 3 + 5 s.
    assert hung == {
        "check": "responds",
        "passed": False,
        "detail": "the probe did not finish within 8 s",
    }
    assert starts.read_text().count("started") == 3


def test_a_blessing_names_the_checks_relaxed_from_their_defaults():
    """A candidate that passes only because a threshold was loosened says so beside
    the decision (a new user turned the popularity-lift check off to get a model
    served); tightening, or changing what is measured, is not listed."""
    checks = gate.value_checks(
        {"recall_at_50": 0.2, "popularity_recall_at_50": 0.25},
        {"auc": 0.8, "normalized_entropy": 0.8, "calibration_ratio": 1.0},
        Thresholds(recall_k=50, min_recall_lift=0.0),
    )
    loosened = Thresholds(min_recall_lift=0.0, max_slice_regression=0.25, min_auc=0.6)
    blessing = gate.decide(checks, loosened, "no model serving yet")
    assert blessing["blessed"]
    assert blessing["relaxed"] == [
        "min_recall_lift 0 (default 1.05)",
        "max_slice_regression 0.25 (default 0.05)",
    ]
    assert blessing["reason"].endswith(
        "; checks relaxed from their defaults: min_recall_lift 0 (default 1.05), "
        "max_slice_regression 0.25 (default 0.05)"
    )
    off = gate.decide(checks, Thresholds(compare_with_champion=False), "not compared")
    assert off["relaxed"] == ["compare_with_champion false (default true)"]
    strict = gate.decide(checks, Thresholds(recall_k=20, compare_estimated_value=True), "x")
    assert strict["relaxed"] == [] and "relaxed" not in strict["reason"]
