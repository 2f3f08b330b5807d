"""Peak resident memory of a piece of work: this process and every process it starts.

A stage reports it beside its time (``recsys.core.progress.stage``), so a run's log
says what each task needed, and ``bench/pipeline_e2e.py`` tabulates it per case.

Two measurements, the larger reported:

- this process's own high-water mark (``VmHWM``), exact: the kernel tracks it, and
  writing 5 to ``/proc/self/clear_refs`` resets it at the start, so stages run one
  after another in one process (``recsys check``, the tests) each get their own;
- the resident set of the whole process tree (this process plus its children: Beam
  workers, training workers, probe processes), sampled every ``interval`` seconds by
  a background thread with psutil. A child's spike shorter than the interval can be
  missed; this process's cannot.

On systems without ``/proc`` (not Linux) only the sampled figure is reported.
"""

import threading

import psutil

GIB = 2**30


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _own_high_water_mark() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(process: psutil.Process) -> int:
    """Resident bytes of ``process`` and all its descendants now (processes that end
    while being read count as 0)."""
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.bytes``: the most resident memory
    this process and its children held at once during the block."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.bytes = 0
        self._stop = threading.Event()
        self._process = psutil.Process()
        self._exact = False

    def __enter__(self) -> "PeakMemory":
        self._exact = _reset_high_water_mark()
        self._sampled = tree_rss(self._process)
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._sampled = max(self._sampled, tree_rss(self._process))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sampled = max(self._sampled, tree_rss(self._process))
        own = _own_high_water_mark() if self._exact else 0
        self.bytes = max(self._sampled, own)

    def describe(self) -> str:
        return f"peak memory {self.bytes / GIB:.2f} GiB"
