"""A/B tests: the stable split, the experiment file's checks and the report's math."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys.app import experiment as report_
from recsys.core.contracts import (
    ARM,
    CLICKED,
    EVENT_ID,
    EVENT_TS,
    ITEM_ID,
    POSITION,
    PROPENSITY,
    REQUEST_ID,
    USER_ID,
    WATCH_SECONDS,
)
from recsys.core.tables import write_dataset
from recsys.serving.experiment import Experiment
from recsys.serving.rerank import RerankConfig

SPEC = {
    "name": "stages",
    "arms": [
        {"name": "funnel", "share": 0.5},
        {"name": "retrieval", "share": 0.3, "order": "retrieval"},
        {"name": "capped", "share": 0.2, "rerank": {"max_per_creator": 1}, "explore_share": 0.1},
    ],
}


def test_a_users_arm_is_the_same_everywhere_and_shares_hold():
    experiment = Experiment.parse(SPEC)
    users = [f"u{i}" for i in range(20_000)]
    arms = pd.Series([experiment.arm_of(user).name for user in users])
    for arm in SPEC["arms"]:
        share = (arms == arm["name"]).mean()
        assert abs(share - arm["share"]) < 4 * np.sqrt(arm["share"] / len(users))
    # The bucket is SHA-256 of "<experiment>/<user>": any client can compute it ...
    digest = hashlib.sha256(b"stages/u7").hexdigest()
    assert experiment.bucket("u7") == int(digest[:15], 16) / 16**15
    # ... and another process (another replica) assigns the same arms.
    script = (
        "from recsys.serving.experiment import Experiment; import json, sys; "
        f"e = Experiment.parse({SPEC!r}); "
        "print(json.dumps([e.arm_of(f'u{i}').name for i in range(200)]))"
    )
    other = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(other) == list(arms[:200])
    # A new experiment name reshuffles users.
    renamed = Experiment.parse({**SPEC, "name": "stages-2"})
    moved = np.mean([renamed.arm_of(u).name != experiment.arm_of(u).name for u in users[:2000]])
    assert moved > 0.4


def test_an_arms_rules_override_the_pushed_ones():
    capped = Experiment.parse(SPEC).arms[2]
    pushed = RerankConfig(k=7, freshness_boost=0.2)
    rules = capped.rules(pushed)
    assert rules.max_per_creator == 1 and rules.k == 7 and rules.freshness_boost == 0.2
    assert capped.exploration.share == 0.1
    assert Experiment.parse(SPEC).arms[0].rules(pushed) is pushed


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["arms"][0].update(share=0.9), "add up to 1"),
        (lambda s: s["arms"][1].update(name="funnel"), "arm names repeat"),
        (lambda s: s["arms"][1].update(order="random"), "order must be one of"),
        (lambda s: s["arms"][2].update(rerank={"max_per_creator": -1}), "arm 3: max_per_creator"),
        (lambda s: s["arms"][2].update(rerank={"cap": 1}), "arm 3: rerank: unknown option"),
        (lambda s: s["arms"][0].update(colour="red"), "arm 1: unknown key"),
        (lambda s: s["arms"][2].update(explore_share=2), "exploration share must be in"),
        (lambda s: s["arms"][0].pop("share"), "needs 'name' and 'share'"),
        (lambda s: s.pop("arms"), "list of 'arms'"),
    ],
)
def test_a_wrong_experiment_file_is_named_with_its_mistake(change, message, tmp_path):
    import copy

    import yaml

    spec = copy.deepcopy(SPEC)
    change(spec)
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(ValueError, match=message) as error:
        Experiment.load(str(path))
    if "arm" in message and "names" not in message:
        assert str(path) in str(error.value)


def logs(arms: dict[str, float], users: int, requests: int, rng, k: int = 3):
    """Exposure log and impressions of an experiment whose arms click each shown item
    with the given probability."""
    experiment = Experiment.parse(
        {"name": "x", "arms": [{"name": a, "share": 1 / len(arms)} for a in arms]}
    )
    user = rng.integers(0, users, requests).astype(str)
    arm = np.array([experiment.arm_of(u).name for u in user])
    rows = pd.DataFrame(
        {
            REQUEST_ID: np.repeat(np.arange(requests).astype(str), k),
            USER_ID: np.repeat(user, k),
            ARM: np.repeat(arm, k),
            POSITION: np.tile(np.arange(k), requests),
        }
    )
    rows[EVENT_ID] = rows[REQUEST_ID] + "-" + rows[POSITION].astype(str)
    rows[EVENT_TS], rows[ITEM_ID], rows[PROPENSITY] = 0, "i", 1.0
    p = rows[ARM].map(arms).to_numpy()
    clicked = (rng.random(len(rows)) < p).astype(int)
    impressions = rows[[EVENT_ID, USER_ID, ITEM_ID, EVENT_TS]].assign(
        **{CLICKED: clicked, WATCH_SECONDS: clicked * 60.0}
    )
    return experiment, rows, impressions


def test_the_report_gives_each_arm_its_rate_and_the_lift_with_intervals(tmp_path):
    rng = np.random.default_rng(0)
    experiment, exposures, impressions = logs({"a": 0.2, "b": 0.25}, 3000, 30_000, rng)
    write_dataset(exposures, str(tmp_path / "exposures"))
    write_dataset(impressions.iloc[:-30], str(tmp_path / "impressions"))  # 30 unlogged
    result = report_.report(str(tmp_path / "exposures"), str(tmp_path / "impressions"), experiment)
    a, b = result["arms"]["a"], result["arms"]["b"]
    assert result["control"] == "a" and a["requests"] + b["requests"] == 30_000
    for arm, rate in ((a, 0.2), (b, 0.25)):
        clicks = arm["per_request"]["clicks"]  # three items per request: 3 x rate
        assert abs(clicks.value - 3 * rate) < 1.5 * clicks.margin  # within 3 standard errors
        assert arm["per_request"]["value"].value == pytest.approx(
            2 * arm["per_request"]["clicks"].value, rel=0.01
        )  # value = clicks + 1 minute per click
    lift = b["lift"]["clicks"]
    assert abs(lift.value - 0.25) < 1.5 * lift.margin and lift.value > lift.margin  # +25%
    assert a["without_impression"] + b["without_impression"] == 30
    assert not result["sample_ratio"]["mismatch"]
    markdown = report_.markdown(result)
    assert "| b | " in markdown and "users per arm follow the shares" in markdown
    assert "30 shown items have no logged impression" in markdown
    report_.write(result, str(tmp_path / "out"))
    assert (tmp_path / "out" / "experiment.html").read_text().count("<tr>") == 3


def test_a_broken_split_is_flagged_by_the_sample_ratio_check(tmp_path):
    rng = np.random.default_rng(1)
    experiment, exposures, impressions = logs({"a": 0.2, "b": 0.2}, 3000, 20_000, rng)
    # Arm b's logging lost a third of its users.
    b_users = exposures.loc[exposures[ARM] == "b", USER_ID].unique()
    exposures = exposures[~exposures[USER_ID].isin(b_users[: len(b_users) // 3])]
    write_dataset(exposures, str(tmp_path / "exposures"))
    write_dataset(impressions, str(tmp_path / "impressions"))
    result = report_.report(str(tmp_path / "exposures"), str(tmp_path / "impressions"), experiment)
    assert result["sample_ratio"]["mismatch"]
    assert "MISMATCH" in report_.markdown(result)


def test_an_exposure_log_without_arms_is_explained(tmp_path):
    exposures = pd.DataFrame({EVENT_ID: ["r-0"], ARM: [""], USER_ID: ["u"], REQUEST_ID: ["r"]})
    write_dataset(exposures, str(tmp_path / "exposures"))
    with pytest.raises(ValueError, match="no experiment arm in the exposure log"):
        report_.report(str(tmp_path / "exposures"), str(tmp_path / "exposures"))


@settings(max_examples=40, deadline=None)
@given(
    st.floats(0.5, 20),
    st.floats(0.01, 2),
    st.floats(0.5, 20),
    st.floats(0.01, 2),
)
def test_the_lift_interval_is_the_delta_method(t, t_margin, c, c_margin):
    from recsys.components.evaluate.offpolicy import Estimate

    result = report_.lift(Estimate(t, t_margin), Estimate(c, c_margin))
    assert result.value == pytest.approx(t / c - 1)
    z = 1.959964
    variance = (t_margin / z / c) ** 2 + (t * c_margin / z / c**2) ** 2
    assert result.margin == pytest.approx(z * np.sqrt(variance))


def test_a_simulated_ab_test_measures_what_the_world_says(pushed_root, tiny_data, tmp_path):
    """Two simulated days of the tiny world's users served by the pushed models in
    three arms; the users answer with the ground truth. Each arm's measured value
    per request is its true value within the interval, a page of 3 items instead of
    10 is measured as the large loss it truly is, and the logs join."""
    from recsys.app.ab_simulation import run_experiment
    from recsys.core.tables import read_dataset

    experiment = Experiment.parse(
        {
            "name": "simulated",
            "arms": [
                {"name": "funnel", "share": 0.4},
                {"name": "retrieval", "share": 0.3, "order": "retrieval"},
                {"name": "short", "share": 0.3, "rerank": {"k": 3}, "explore_share": 0.5},
            ],
        }
    )
    out = str(tmp_path / "experiment")
    result = run_experiment(pushed_root, tiny_data, experiment, 2, out, seed=1)
    arms = result["arms"]
    assert set(arms) == {"funnel", "retrieval", "short"} and result["control"] == "funnel"
    assert not result["sample_ratio"]["mismatch"]
    for name, arm in arms.items():
        measured, truth = arm["per_request"]["value"], arm["true_per_request"]["value"]
        assert abs(measured.value - truth) < 1.5 * measured.margin, (name, measured, truth)
    short = arms["short"]
    assert short["true_lift"]["value"] < -0.4
    low, high = short["lift"]["value"].interval
    assert high < 0 and low <= short["true_lift"]["value"] <= high
    exposures = read_dataset(f"{out}/exposures")
    impressions = read_dataset(f"{out}/impressions")
    assert exposures["event_id"].is_unique and set(exposures["event_id"]) == set(
        impressions["event_id"]
    )
    shown = exposures.groupby("request_id")["position"].max() + 1
    by_arm = exposures.drop_duplicates("request_id").set_index("request_id")["arm"]
    assert (shown[by_arm == "short"] == 3).all() and (shown[by_arm == "funnel"] == 10).all()
    explored = exposures[(exposures["arm"] == "short") & (exposures["propensity"] < 1)]
    assert len(explored) and (explored["position"] == 2).all()
    assert (tmp_path / "experiment" / "experiment.html").exists()
