"""Stage progress lines: what started, what finished, and how long it took.

Lines look like ``[12:00:01] features: finished in 16.5s, peak memory 1.21 GiB``;
``recsys run`` shows exactly these lines from the (much noisier) KFP task logs. The
peak is the resident memory of the stage's process and its children
(``recsys.core.memory``).
"""

import contextlib
import re
import sys
import time

from recsys.core.memory import PeakMemory

PROGRESS_LINE = re.compile(r"^\s*\[\d\d:\d\d:\d\d\] [\w/-]+: ")


def log(stage: str, message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    for line in str(message).splitlines() or [""]:
        print(f"[{stamp}] {stage}: {line}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(name: str):
    """Print a start line, then a finish line with the time and peak memory, or the
    failure and its message."""
    started = time.monotonic()
    log(name, "started")
    peak = PeakMemory()
    try:
        with peak:
            yield
    except BaseException as error:
        log(
            name,
            f"FAILED after {time.monotonic() - started:.1f}s ({peak.describe()}): "
            f"{type(error).__name__}: {error}",
        )
        raise
    log(name, f"finished in {time.monotonic() - started:.1f}s, {peak.describe()}")
