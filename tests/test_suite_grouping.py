"""The suite's own speed depends on pytest-xdist grouping: the trained fixtures
(``stages``, the end-to-end runs) are built once per worker that runs their
group. With pytest 9.2 and pytest-xdist 3.8 the ``xdist_group`` mark is silently
ignored (pytest-xdist#1386) and every worker builds every fixture, doubling
the suite's time without a single failure. This test is the failure.
"""

import pytest


@pytest.mark.xdist_group("grouping_check")
def test_xdist_group_mark_reaches_the_scheduler(request):
    if not hasattr(request.config, "workerinput"):
        pytest.skip("runs under pytest-xdist only (make test uses -n 2 --dist loadgroup)")
    # loadgroup schedules by the "@group" suffix it appends to the node id.
    assert request.node.nodeid.endswith("@grouping_check"), (
        f"{request.node.nodeid}: xdist_group is not applied; check the pytest pin "
        "in requirements.in"
    )
