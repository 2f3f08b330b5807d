"""The Beam stages off DirectRunner: the point-in-time join (bucketed and broadcast),
TFDV statistics and TFT analyze+transform run on Beam's PortableRunner against
Beam's own job service with an external SDK worker pool, and give DirectRunner's
output.

This is the path Flink, Spark and Dataflow take (the pipeline as a proto through
the Job API, every element through coders, user code in a separate SDK worker
process over the Fn API); the job service runs the pipeline with the FnApiRunner,
so it says nothing about a distributed shuffle (docs/design.md).
"""

import filecmp
import json
import os

import pandas as pd
import pytest

from recsys.components.features import join
from recsys.components.features.config import JoinConfig
from recsys.components.features.transform import transform
from recsys.components.validate.validate import compute_statistics
from recsys.core.tables import read_dataset
from tests.servers import beam_portable_runner
from tests.test_beam_asof import JOINED, join_stage

# One worker runs these tests: they share the session's job service.
pytestmark = pytest.mark.xdist_group("portable_runner")


@pytest.fixture(scope="session")
def portable_args(tmp_path_factory):
    """Beam's job service and an external worker pool for the session."""
    with beam_portable_runner(str(tmp_path_factory.mktemp("beam_job_service"))) as args:
        yield args


def _canonical(directory: str) -> pd.DataFrame:
    """A dataset as rows in a fixed order: runners write their shards in any order."""
    frame = read_dataset(directory)
    frame = frame.apply(lambda c: c.map(repr) if c.dtype == object else c)
    return frame.sort_values(list(frame.columns), ignore_index=True)


@pytest.mark.parametrize("strategy", ["bucket", "broadcast"])
def test_join_on_the_portable_runner_equals_direct_runner(
    stages, tmp_path, portable_args, strategy, monkeypatch
):
    paths = stages["paths"]
    views = ("user_features", "item_features")
    config = JoinConfig(feature_views=json.dumps({v: {"join": strategy} for v in views}))
    if strategy == "bucket":  # the engagement history too (it is broadcast below this size)
        monkeypatch.setattr(join, "HISTORY_BROADCAST_MAX_ROWS", 0)
    outputs = join_stage(stages, tmp_path, portable_args, config)
    for name in JOINED:
        pd.testing.assert_frame_equal(_canonical(outputs[name]), _canonical(paths[name]))


def test_tfdv_statistics_on_the_portable_runner_equal_direct_runner(
    stages, tmp_path, portable_args
):
    datasets = {name: stages["paths"][name] for name in ("train_examples", "eval_examples")}
    direct = compute_statistics(datasets, str(tmp_path / "direct"), "[]")
    portable = compute_statistics(datasets, str(tmp_path / "portable"), portable_args)
    assert portable.keys() == direct.keys()
    approximate = set()
    for name in direct:
        for ours, theirs in zip(_features(portable[name]), _features(direct[name]), strict=True):
            # Top values come from a Misra-Gries sketch of 1,024 buckets (bounded memory):
            # exact below that many distinct values, approximate and dependent on the
            # order sketches merge in above it (event ids, one per row).
            if ours.string_stats.unique > MISRA_GRIES_BUCKETS:
                approximate.add(ours.path.step[0])
                for stats in (ours, theirs):
                    stats.string_stats.ClearField("top_values")
                    stats.string_stats.ClearField("rank_histogram")
            assert ours == theirs, ours.path
    assert approximate <= {"event_id"}  # every feature the checks read is exact


MISRA_GRIES_BUCKETS = 1024


def _features(statistics):
    return sorted(statistics.datasets[0].features, key=lambda f: f.path.step[0])


def test_tft_on_the_portable_runner_equals_direct_runner(stages, tmp_path, portable_args):
    paths = stages["paths"]
    graph = str(tmp_path / "transform_graph")
    outputs = {split: str(tmp_path / f"transformed_{split}") for split in ("train", "eval")}
    transform(
        paths["train_examples"],
        paths["eval_examples"],
        paths["schema"],
        graph,
        outputs,
        str(tmp_path / "tmp"),
        beam_pipeline_args=portable_args,
    )
    vocabularies = os.path.join("transform_fn", "assets")
    direct_vocabularies = os.path.join(paths["transform_graph"], vocabularies)
    names = sorted(os.listdir(direct_vocabularies))
    assert names == sorted(os.listdir(os.path.join(graph, vocabularies)))
    match, mismatch, errors = filecmp.cmpfiles(
        direct_vocabularies, os.path.join(graph, vocabularies), names, shallow=False
    )
    assert (mismatch, errors) == ([], [])
    for split, directory in outputs.items():
        pd.testing.assert_frame_equal(
            _canonical(directory), _canonical(paths[f"transformed_{split}"])
        )
