"""The parameters of ingest, declared once.

Each field's name, type, default and meaning: the pipeline's parameters and the
KFP shim's arguments derive from these fields (``recsys.core.config``). No heavy
imports here: the pipeline reads every stage's config to build its signature.
"""

from dataclasses import dataclass

from recsys.core.config import parameter


@dataclass(frozen=True)
class IngestConfig:
    as_of: str = parameter(
        "",
        "end of the data window (date or timestamp, UTC); empty: the midnight after "
        "the newest event",
    )
    lookback_days: int = parameter(14, "days of events in the window, eval included")
    eval_days: int = parameter(3, "the window's last days: the eval split")
    max_reject_rate: float = parameter(
        0.01, "fail when more than this share of any table's rows break the contract"
    )
    input_encoding: str = parameter("utf-8", "encoding of CSV files")
