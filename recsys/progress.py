"""Stage progress lines: what started, what finished, and how long it took."""

import contextlib
import sys
import time


def log(stage: str, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {stage}: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stage(name: str):
    """Print a start line, then a finish (or failure) line with the elapsed time."""
    started = time.monotonic()
    log(name, "started")
    try:
        yield
    except BaseException:
        log(name, f"FAILED after {time.monotonic() - started:.1f}s")
        raise
    log(name, f"finished in {time.monotonic() - started:.1f}s")
