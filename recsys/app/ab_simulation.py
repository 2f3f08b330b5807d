"""``recsys simulate --experiment FILE``: a whole A/B test offline, on the synthetic world.

The world is generated for a training window, the pipeline runs once on it
(train, evaluate, push), and then for each simulated day every user comes back as
often as the world says (their activity, evening-heavy hours), is served by the
arm the experiment's hash gives them (``recsys.serving.experiment``), with the
pushed models, and responds as the world's ground truth draws it
(``recsys.core.ground_truth``): clicks and watches of what that arm showed. The
online features follow: a day's requests see the clicks of the days before,
folded in as the service folds posted events (``recsys.core.online_features``,
refreshed daily here).

Written like the service writes them: the exposure log (what each request showed,
with positions, propensities and arms) and the impressions (the users' responses,
by event id); ``recsys experiment report`` reads them, and the result adds each
arm's true value per request (the oracle's expectation of what was shown) beside
the measured one.
"""

import json
import os

import numpy as np
import pandas as pd

from recsys.app import experiment as experiment_report
from recsys.app import local_run
from recsys.app.generate import generate
from recsys.core import storage
from recsys.core.contracts import (
    ARM,
    CLICKED,
    EVENT_ID,
    EVENT_TS,
    ITEM_ID,
    POSITION,
    PROPENSITY,
    REQUEST_ID,
    SNAPSHOT_AS_OF,
    SNAPSHOT_DIR,
    SNAPSHOT_HISTORY_LENGTH,
    SNAPSHOT_META,
    USER_ID,
    WATCH_SECONDS,
)
from recsys.core.derived import DAY, context_columns
from recsys.core.ground_truth import HOUR_WEIGHTS, Oracle, respond
from recsys.core.online_features import apply_events
from recsys.core.progress import log
from recsys.core.tables import write_dataset
from recsys.serving.experiment import Experiment
from recsys.serving.funnel import Funnel
from recsys.serving.serving_root import served_version
from recsys.serving.snapshot import FeatureSnapshot

START = "2026-01-05"


def requests_of_day(world, day_start: int, per_user_day: float, rng) -> pd.DataFrame:
    """Who comes back when on the day starting at ``day_start``: (user_id, event_ts)."""
    counts = rng.poisson(world.activity * per_user_day)
    users = np.repeat(world.user_ids, counts)
    hours = rng.choice(24, len(users), p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    seconds = day_start + hours * 3600 + rng.integers(0, 3600, len(users))
    return pd.DataFrame({USER_ID: users, EVENT_TS: seconds}).sort_values(EVENT_TS, kind="stable")


def user_rows(snapshot, users, events, history_length, at) -> dict[str, np.ndarray]:
    """Every one of ``users``' online row at ``at``, as columns (one row per user, in
    order): the snapshot's (or the cold-start row) with their simulated engagements
    before ``at`` folded in."""
    by_user = dict(tuple(events.groupby(USER_ID))) if len(events) else {}
    rows = []
    for user in users:
        row, _ = snapshot.user(user)
        mine = by_user.get(user)
        rows.append(apply_events(row, mine, history_length, at) if mine is not None else row)
    return {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}


def queries(requests: pd.DataFrame, rows: dict[str, np.ndarray], users) -> dict[str, np.ndarray]:
    """The raw query columns of ``requests``: each user's row (``rows``, one per
    ``users``) plus the request context."""
    positions = pd.Index(users).get_indexer(requests[USER_ID])
    ts = requests[EVENT_TS].to_numpy(np.int64)
    return {
        **{name: values[positions] for name, values in rows.items()},
        **context_columns(ts),
        EVENT_TS: ts,
    }


def simulate_experiment(
    workdir: str,
    experiment: Experiment,
    days: int,
    lookback_days: int = 14,
    eval_days: int = 3,
    users: int = 2000,
    items: int = 400,
    seed: int = 7,
    config: dict | None = None,
    requests_per_user_day: float = 4.0,
) -> dict:
    """Train once, then run ``experiment`` for ``days`` simulated days; write the
    exposure log, the impressions and the report (experiment.json/.html) under
    ``workdir``/experiment and return the report."""
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    workdir = os.path.abspath(workdir)
    data_root = os.path.join(workdir, "data")
    log("simulate", f"generating {lookback_days} days of the synthetic world into {data_root}")
    generate(data_root, users=users, items=items, days=lookback_days, seed=seed, start=START)
    parameters = {**(config or {}), "lookback_days": lookback_days, "eval_days": eval_days}
    try:
        outputs = local_run.run(workdir, data_root, parameters, label="experiment-training")
    except local_run.RunFailed as error:
        raise ValueError(f"the training run failed, so no arm has models: {error}") from None
    if not outputs["push_report"]["metadata"]["pushed"]:
        raise ValueError(
            "the training run pushed nothing, so no arm has models to serve: "
            f"{outputs['blessing']['metadata']['reason']}"
        )
    return run_experiment(
        os.path.join(workdir, "serving"),
        data_root,
        experiment,
        days,
        os.path.join(workdir, "experiment"),
        seed,
        float(parameters.get("ranking_score_watch_weight", 1.0)),
        requests_per_user_day,
    )


def run_experiment(
    serving_root: str,
    data_root: str,
    experiment: Experiment,
    days: int,
    out: str,
    seed: int = 7,
    watch_weight: float = 1.0,
    requests_per_user_day: float = 4.0,
) -> dict:
    """Serve ``days`` simulated days from the snapshot's ``as_of`` on with the version
    ``serving_root`` serves, users of the world under ``data_root`` answering;
    write the exposure log, the impressions and the report under ``out``."""
    funnel = Funnel.from_serving_root(serving_root, rng=np.random.default_rng(seed))
    snapshot_dir = storage.join(
        serving_root, SNAPSHOT_DIR, str(served_version(serving_root, "retrieval"))
    )
    snapshot = FeatureSnapshot.load(snapshot_dir)
    meta = json.loads(storage.read_text(storage.join(snapshot_dir, SNAPSHOT_META)))
    history_length = int(meta[SNAPSHOT_HISTORY_LENGTH])
    oracle = Oracle.load(data_root)
    rng = np.random.default_rng(seed + 1)
    first_day = int(meta[SNAPSHOT_AS_OF]) // DAY * DAY
    engagements = pd.DataFrame(
        {USER_ID: [], EVENT_TS: [], ITEM_ID: [], CLICKED: [], WATCH_SECONDS: []}
    )
    exposures, impressions, truth = [], [], []
    arm_of = {user: experiment.arm_of(user).name for user in oracle.world.user_ids}
    for day in range(days):
        day_start = first_day + day * DAY
        requests = requests_of_day(oracle.world, day_start, requests_per_user_day, rng)
        requests[REQUEST_ID] = [f"d{day:03d}r{i:07d}" for i in range(len(requests))]
        requests[ARM] = requests[USER_ID].map(arm_of)
        rows = user_rows(snapshot, oracle.world.user_ids, engagements, history_length, day_start)
        # Retrieval and ranking once a day for every request; each arm arranges them.
        scored = funnel.candidates(queries(requests, rows, oracle.world.user_ids))
        responses = []
        for arm in experiment.arms:
            # Every request gets this arm's page: the ones it serves are shown and
            # answered; all of them give the arm's true value had it served everyone.
            pages = funnel.arrange(scored, arm=arm)
            lengths = [len(page) for page, _, _ in pages]
            shown = pd.concat([page for page, _, _ in pages], ignore_index=True)
            request = requests.loc[requests.index.repeat(lengths)].reset_index(drop=True)
            shown = pd.concat([request, shown[[ITEM_ID, PROPENSITY]]], axis=1)
            shown[POSITION] = np.concatenate([np.arange(n) for n in lengths])
            shown[EVENT_ID] = shown[REQUEST_ID] + "-" + shown[POSITION].astype(str)
            engagement = oracle.engagement(shown[USER_ID], shown[ITEM_ID], shown[EVENT_TS])
            truth.append(
                pd.DataFrame(
                    {
                        "page_of": arm.name,
                        ARM: shown[ARM],
                        REQUEST_ID: shown[REQUEST_ID],
                        "clicks": engagement.click_probability,
                        "watch_seconds": engagement.expected_watch_seconds,
                    }
                )
            )
            served = (shown[ARM] == arm.name).to_numpy()
            shown = shown[served].reset_index(drop=True)
            clicked, watched = respond(rng, engagement.logit[served], engagement.duration_s[served])
            shown[CLICKED], shown[WATCH_SECONDS] = clicked, watched
            exposures.append(
                shown[[EVENT_ID, EVENT_TS, REQUEST_ID, USER_ID, ARM, ITEM_ID, POSITION, PROPENSITY]]
            )
            responses.append(
                shown[[EVENT_ID, EVENT_TS, USER_ID, ITEM_ID, CLICKED, WATCH_SECONDS, PROPENSITY]]
            )
        impressions += responses
        engagements = pd.concat(
            [engagements, *(r[engagements.columns] for r in responses)], ignore_index=True
        )
        log("simulate", f"experiment day {day + 1}/{days}: {len(requests)} requests")

    write_dataset(pd.concat(exposures, ignore_index=True), storage.join(out, "exposures"))
    write_dataset(pd.concat(impressions, ignore_index=True), storage.join(out, "impressions"))
    result = experiment_report.report(
        storage.join(out, "exposures"),
        storage.join(out, "impressions"),
        experiment,
        watch_weight=watch_weight,
    )
    true = pd.concat(truth, ignore_index=True)
    true["value"] = true["clicks"] + watch_weight * true["watch_seconds"] / 60.0
    metrics = ["clicks", "watch_seconds", "value"]
    pages = true.groupby(["page_of", REQUEST_ID, ARM], sort=False)[metrics].sum().reset_index()
    control = result["control"]
    everyone = pages.groupby("page_of")[metrics].mean()
    for arm in result["arms"]:
        mine = pages[(pages["page_of"] == arm) & (pages[ARM] == arm)]
        result["arms"][arm]["true_per_request"] = mine[metrics].mean().to_dict()
        # The same requests (everyone's) with each arm's page: the effect the A/B
        # test estimates, without the noise of which users each arm drew.
        result["arms"][arm]["true_if_served_to_all"] = everyone.loc[arm].to_dict()
        result["arms"][arm]["true_lift"] = (everyone.loc[arm] / everyone.loc[control] - 1).to_dict()
    experiment_report.write(result, out)
    return result
