"""The recommendation service behind ``recsys serve``: one process that answers
requests with the served models, hot-reloads them, and logs what it served.

A *bundle* is one served version of everything a request needs: the models (in
this process, or TF Serving behind gRPC/REST), the feature snapshot pushed with
them (its users in the online store, its items in memory) and the re-ranking
rules. ``Service`` keeps the current bundle and swaps it when ``models.config``
changes:

- a watcher thread reads ``models.config`` every ``reload_seconds``; a new
  version is loaded, materialized in the online store and warmed (requests
  replayed) off the request path, then becomes current with one reference
  assignment;
- each request takes the bundle current when it starts and keeps it to the end;
  a replaced bundle is closed when its last request finishes;
- a version that fails to load is reported (``/readyz``, metrics, log) and not
  retried until ``models.config`` changes again; the old bundle keeps serving.

The HTTP API (``create_app``, FastAPI on uvicorn) is a thin layer over
``Service.recommend`` / ``Service.add_events``.
"""

import contextlib
import hmac
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from recsys.core import storage
from recsys.core.contracts import (
    CLICKED,
    EVENT_TS,
    ITEM_ID,
    ITEM_IDS,
    MODELS,
    RETRIEVAL,
    SNAPSHOT_AS_OF,
    SNAPSHOT_DIR,
    SNAPSHOT_HISTORY_LENGTH,
    SNAPSHOT_META,
    SNAPSHOT_QUERY_MODEL,
    SNAPSHOT_WATCHED_FROM,
    SNAPSHOT_WATCHED_MAX,
    USER_ID,
    WATCH_SECONDS,
    WATCHED_MAX_ITEMS,
)
from recsys.core.features import HISTORY_COLUMNS
from recsys.core.online_features import apply_events
from recsys.core.requests import raw_arrays
from recsys.serving import serving_root as root_
from recsys.serving.backends import InProcessBackend, backend_target, remote_backend
from recsys.serving.experiment import Experiment
from recsys.serving.exploration import ExplorationConfig
from recsys.serving.funnel import Context, Funnel
from recsys.serving.online_store import FeatureStoreError, open_store
from recsys.serving.retrieval import ANN_MIN_ITEMS, ModelRetrieval, index_retrieval
from recsys.serving.serving_log import BackgroundServingLog
from recsys.serving.snapshot import FeatureSnapshot, pushed_rerank_config

logger = logging.getLogger("recsys.serve")

# Per-stage latency buckets (seconds): a 50 ms budget, resolved down to 0.5 ms.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
RETRIEVALS = ("auto", "index", "model")
# Known users whose requests warm a version up (plus one unknown user).
WARMUP_USERS = 3


@dataclass(frozen=True)
class ServiceConfig:
    serving_root: str
    backend: str = "in-process"  # in-process or a remote spec (backends.BACKEND_SPECS)
    feature_store: str = "embedded"  # embedded, or redis://host:port/db
    # Candidates: "index" (query tower + item index, exact below ann_min_items items,
    # HNSW above), "model" (the retrieval model's top-K), "auto" (index when the
    # version pushed its query tower).
    retrieval: str = "auto"
    ann_min_items: int = ANN_MIN_ITEMS
    serving_log: str = ""  # directory (or bucket prefix) for the serving log; empty: none
    reload_seconds: float = 2.0
    max_k: int = 100
    max_exclude: int = 1000
    max_events: int = 1000
    max_body_bytes: int = 256 * 1024
    # Requests in progress at once (/v1/*); past it a request gets 503 with
    # Retry-After at once instead of waiting in a queue that only grows.
    max_in_flight: int = 4
    token: str = field(default="", repr=False)  # bearer token for /v1/*; empty: none
    log_rows_per_file: int = 50_000
    log_flush_seconds: float = 60.0
    # A share of requests explores its last slot; each item's propensity is returned.
    exploration: ExplorationConfig = ExplorationConfig()
    # An A/B test over funnel settings: each user's arm by a stable hash.
    experiment: Experiment | None = None
    exposure_log: str = ""  # directory for what each request showed (arm, propensity)

    def __post_init__(self):
        if self.backend != "in-process":
            backend_target(self.backend)  # a ValueError names what is wrong
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.retrieval not in RETRIEVALS:
            raise ValueError(f"retrieval {self.retrieval!r}: use one of {RETRIEVALS}")
        if self.max_k < 1 or self.reload_seconds <= 0:
            raise ValueError("max_k must be at least 1 and reload_seconds positive")


class NotReady(RuntimeError):
    """No version is loaded yet (or none can be)."""


class Bundle:
    """One served version: the funnel over its models and snapshot, and what the
    online store calls it. Counts the requests using it, so it is closed only after
    the last one."""

    def __init__(self, versions: dict[str, int], funnel: Funnel, key: str, meta: dict, owned=()):
        """``owned``: what to close with the bundle (its backend, its index)."""
        self.versions, self.funnel, self.key, self.owned = versions, funnel, key, owned
        self.as_of = meta.get(SNAPSHOT_AS_OF)
        self.history_length = int(meta.get(SNAPSHOT_HISTORY_LENGTH) or _longest_history(funnel))
        # How the watched items grow online (as the join built them).
        self.watched = {
            "watched_max": int(meta.get(SNAPSHOT_WATCHED_MAX, WATCHED_MAX_ITEMS)),
            "watched_from_impressions": meta.get(SNAPSHOT_WATCHED_FROM) == "impressions",
        }
        self.feature_store: dict = {}  # what the online store said when it was prepared
        self._users = 0
        self._retired = self._closed = False
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        """Count a request in; False if the bundle was already closed (the request
        then takes the current one)."""
        with self._lock:
            if self._closed:
                return False
            self._users += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            close = self._retired and self._users == 0 and not self._closed
            self._closed |= close
        if close:
            self._close()

    def retire(self) -> None:
        with self._lock:
            self._retired = True
            close = self._users == 0 and not self._closed
            self._closed |= close
        if close:
            self._close()

    def _close(self) -> None:
        for thing in self.owned:
            thing.close()


def store_key(serving_root: str, version: int) -> str:
    """What the online store calls a version's rows: its number and content hash
    (two roots sharing one store, or a root made again, never mix rows)."""
    record = root_.read_record(serving_root, version) or {}
    return f"{version}-{record.get('content_hash', 'unrecorded')[:12]}"


def materialize(serving_root: str, feature_store: str) -> dict:
    """Write the served version's user rows into the online store, as a service does
    when it first loads a version: run after a push, so no replica pays for it."""
    served = root_.served_versions(serving_root)
    if not served:
        raise root_.ServingRootError(f"nothing is served under {serving_root}: push first")
    if feature_store in ("", "embedded"):
        raise ValueError("materialize writes to a shared store: give a Redis URL")
    version = served[RETRIEVAL]
    snapshot = FeatureSnapshot.load(storage.join(serving_root, SNAPSHOT_DIR, str(version)))
    store = open_store(feature_store)
    try:
        return {"version": version, **store.prepare(store_key(serving_root, version), snapshot)}
    finally:
        store.close()


def _longest_history(funnel: Funnel) -> int:
    """Pushes without snapshot.json: the longest history in the snapshot (the join's
    history_length when any user has that many clicks)."""
    histories = funnel.features.users.get(HISTORY_COLUMNS[0])
    return max((len(h) for h in histories), default=1) if histories is not None else 1


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "recsys_stage_seconds", "Time per request stage", ["stage"], registry=r,
            buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.requests = Counter(
            "recsys_requests", "Requests by endpoint and status", ["endpoint", "status"], registry=r
        )  # noqa: E501
        self.errors = Counter(
            "recsys_errors", "Requests that failed in the service", ["reason"], registry=r
        )  # noqa: E501
        self.rejected = Counter(
            "recsys_rejected", "Requests refused at capacity (503)", ["endpoint"], registry=r
        )
        self.in_flight = Gauge("recsys_in_flight", "Requests in progress", registry=r)
        self.served_version = Gauge(
            "recsys_served_version", "Version being served", ["model"], registry=r
        )  # noqa: E501
        self.store_misses = Counter(
            "recsys_feature_store_misses", "Users not in the online store (cold start)", registry=r
        )  # noqa: E501
        self.log_dropped = Counter(
            "recsys_serving_log_dropped_rows",
            "Serving-log and exposure-log rows dropped (queue full or write failed)",
            registry=r,
        )  # noqa: E501
        self.reloads = Counter(
            "recsys_reloads", "Version loads by outcome", ["outcome"], registry=r
        )  # noqa: E501
        self.events = Counter("recsys_events", "Engagement events received", registry=r)
        self.arms = Counter(
            "recsys_arm_requests", "Requests by experiment arm", ["arm"], registry=r
        )
        self.ready = Gauge("recsys_ready", "1 when a version is loaded and warmed", registry=r)


class Service:
    """Loads the served version, answers requests with it, follows ``models.config``."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        self.metrics = Metrics()
        self.store = open_store(config.feature_store)
        # Both logs are written off the request path; a dropped row is counted.
        self.log, self.exposures = (
            BackgroundServingLog(
                directory,
                config.log_rows_per_file,
                config.log_flush_seconds,
                on_drop=self.metrics.log_dropped.inc,
            )
            if directory
            else None
            for directory in (config.serving_log, config.exposure_log)
        )
        self.bundle: Bundle | None = None
        self.status = "starting: no version loaded yet"
        self._failed: dict | None = None  # the served versions that failed to load
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._shared_backend = None

    # --- versions -----------------------------------------------------------------

    def start(self) -> "Service":
        """Load what is served now (if anything) and follow models.config from then
        on, in a thread: the process answers liveness probes while it loads."""
        self._watcher = threading.Thread(target=self._watch, name="model-watcher", daemon=True)
        self._watcher.start()
        return self

    def _watch(self) -> None:
        self.reload()
        while not self._stop.wait(self.config.reload_seconds):
            self.reload()

    def reload(self) -> bool:
        """Load and switch to the served versions if they changed; True if switched."""
        try:
            served = root_.served_versions(self.config.serving_root)
        except (root_.ServingRootError, OSError) as error:
            self._report_failure(None, f"cannot read models.config: {error}")
            return False
        current = self.bundle.versions if self.bundle else None
        if not served or served == current or served == self._failed:
            if not served and self.bundle is None:
                self.status = f"not ready: nothing is served under {self.config.serving_root}"
            return False
        started = time.monotonic()
        bundle = None
        try:
            bundle = self._load(served)
            self._warm(bundle)
        except Exception as error:  # any failure to load keeps the old version serving
            if bundle is not None:
                self._discard(bundle)
            self._failed = served
            self._report_failure(served, f"{type(error).__name__}: {error}")
            return False
        previous, self.bundle = self.bundle, bundle
        self._failed = None
        for model, version in served.items():
            self.metrics.served_version.labels(model).set(version)
        self.metrics.reloads.labels("loaded").inc()
        self.metrics.ready.set(1)
        self.status = f"ready: serving {_versions(served)}"
        logger.info("serving %s (loaded in %.1f s)", served, time.monotonic() - started)
        if previous is not None:
            self._discard(previous)
        return True

    def _discard(self, bundle: Bundle) -> None:
        """Close ``bundle`` after its last request, and drop its rows from the store
        unless the current bundle reads the same ones (a switch of the ranker alone
        keeps the retrieval version, and so the snapshot)."""
        bundle.retire()
        if self.bundle is None or self.bundle.key != bundle.key:
            self.store.retire(bundle.key)

    def _report_failure(self, served, reason: str) -> None:
        self.metrics.reloads.labels("failed").inc()
        what = _versions(served) if served else "models.config"
        message = f"{what} not loaded: {reason}"
        logger.error(message)
        if self.bundle is None:
            self.status = f"not ready: {message}"
        else:
            self.status = f"ready: serving {_versions(self.bundle.versions)}; {message}"

    def _backend(self, served: dict[str, int]):
        spec, root = self.config.backend, self.config.serving_root
        if spec == "in-process":
            return InProcessBackend(
                {name: storage.join(root, name, str(served[name])) for name in MODELS}, served
            )
        # TF Serving loads versions itself (it reads the same models.config): one
        # client for every bundle.
        if self._shared_backend is None:
            self._shared_backend = remote_backend(spec)
        return self._shared_backend

    def _load(self, served: dict[str, int]) -> Bundle:
        root = self.config.serving_root
        version = served[RETRIEVAL]
        snapshot_dir = storage.join(root, SNAPSHOT_DIR, str(version))
        snapshot = FeatureSnapshot.load(snapshot_dir)
        meta_path = storage.join(snapshot_dir, SNAPSHOT_META)
        meta = json.loads(storage.read_text(meta_path)) if storage.exists(meta_path) else {}
        key = store_key(root, version)
        backend = self._backend(served)
        owned = [backend] if self.config.backend == "in-process" else []
        retrieval = None
        pushed_query_model = storage.isdir(storage.join(snapshot_dir, SNAPSHOT_QUERY_MODEL))
        if self.config.retrieval == "index" or (
            self.config.retrieval == "auto" and pushed_query_model
        ):
            # As many candidates as the retrieval model returns: what evaluate measured.
            probe = ModelRetrieval(backend)
            query = {**snapshot.registry.missing_row("user", "probe"), **Context().columns()}
            top_k = probe.retrieve(raw_arrays(query, probe.signature))[ITEM_IDS].shape[1]
            retrieval = index_retrieval(
                snapshot_dir, top_k, ann_min_items=self.config.ann_min_items
            )
            owned.append(retrieval)
        funnel = Funnel(
            backend,
            snapshot,
            pushed_rerank_config(snapshot_dir),
            serving_log=self.log,
            exposure_log=self.exposures,
            version=version,
            retrieval=retrieval,
            exploration=self.config.exploration,
        )
        bundle = Bundle(served, funnel, key, meta, owned)
        prepared = self.store.prepare(key, snapshot)
        bundle.feature_store = {"store": self.store.name, "key": key, **prepared}
        logger.info("feature store: %s", bundle.feature_store)
        if self.store.name != "embedded":
            # The users live in the store now; a few stay for the warmup requests.
            snapshot.keep_users(WARMUP_USERS)
        return bundle

    def _warm(self, bundle: Bundle) -> None:
        """Requests through the whole funnel before the bundle takes traffic: the
        first calls of a SavedModel trace and allocate."""
        users = list(bundle.funnel.features.user_index[:WARMUP_USERS]) + ["warmup-unknown-user"]
        for user in users:
            self._recommend(bundle, user, Context(), None, (), log=False)

    # --- requests -----------------------------------------------------------------

    def recommend(self, user_id: str, at=None, k: int | None = None, exclude=()) -> dict:
        while True:  # a bundle closed between reading it and counting in: take the new one
            bundle = self.bundle
            if bundle is None:
                raise NotReady(self.status)
            if bundle.acquire():
                break
        try:
            return self._recommend(bundle, user_id, Context(at), k, exclude, log=True)
        finally:
            bundle.release()

    def _recommend(self, bundle: Bundle, user_id, context, k, exclude, log: bool) -> dict:
        started = time.perf_counter()
        if context.at is None:
            context = Context(pd.Timestamp.now(tz="UTC"))
        row, events = self.store.user(bundle.key, user_id)
        known = row is not None
        if not known and log:
            self.metrics.store_misses.inc()
        # The engagements the snapshot does not hold (from its as_of on), folded in
        # as the join would for an event at the request's time.
        if events is not None:
            events = events[events[EVENT_TS].to_numpy() >= (bundle.as_of or 0)]
        if row is None:  # the cold-start row, built once for this request
            row = bundle.funnel.features.registry.missing_row("user", user_id)
        if events is not None and not events.empty:
            row = apply_events(
                row, events, bundle.history_length, int(context.at.timestamp()), **bundle.watched
            )
        features_seconds = time.perf_counter() - started
        experiment = self.config.experiment
        arm = experiment.arm_of(user_id) if experiment else None
        result = bundle.funnel.recommend(
            user_id, context, k, exclude, user_row=row, log=log, arm=arm
        )
        page = result.items
        if arm is not None and log:
            self.metrics.arms.labels(arm.name).inc()
        body = {
            "request_id": result.request_id,
            "user_id": user_id,
            "arm": result.arm,
            "known_user": known,
            "versions": {**bundle.versions, "features": bundle.versions[RETRIEVAL]},
            "items": _records(page),
            "removed": result.removed,
        }
        if log:
            stages = {"features": features_seconds}
            stages.update({step: ms / 1000 for step, ms in result.milliseconds.items()})
            for stage, seconds in stages.items():
                self.metrics.latency.labels(stage).observe(seconds)
        body["milliseconds"] = {
            "features": round(features_seconds * 1000, 3),
            **{step: round(ms, 3) for step, ms in result.milliseconds.items()},
        }
        return body

    def add_events(self, events: list[dict]) -> int:
        if not events:
            return 0
        frame = pd.DataFrame(events).rename(columns={"ts": EVENT_TS})
        now = int(time.time())
        frame[EVENT_TS] = frame[EVENT_TS].fillna(now).astype(np.int64)
        frame[CLICKED] = frame[CLICKED].astype(np.int64)
        frame[WATCH_SECONDS] = frame[WATCH_SECONDS].astype(np.float64)
        frame[USER_ID] = frame[USER_ID].astype(str)
        frame[ITEM_ID] = frame[ITEM_ID].astype(str)
        self.store.add_events(frame)
        self.metrics.events.inc(len(frame))
        return len(frame)

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        for log in (self.log, self.exposures):
            if log is not None:
                log.close()
        if self.bundle is not None:
            self.bundle.retire()
        self.store.close()


def _versions(served: dict[str, int]) -> str:
    return ", ".join(f"{model} v{version}" for model, version in sorted(served.items()))


def _records(page: pd.DataFrame) -> list[dict]:
    """The page's rows as JSON-ready dicts (``tolist`` gives Python numbers and
    strings column by column: a few times faster than ``to_dict`` per row)."""
    columns = {name: page[name].tolist() for name in page.columns}
    rows = zip(*columns.values(), strict=True)
    return [dict(zip(columns, values, strict=True)) for values in rows]


# --- the HTTP API ---------------------------------------------------------------------


def create_app(service: Service):
    """The FastAPI app over ``service``: /v1/recommend, /v1/events, /healthz,
    /readyz, /metrics and the OpenAPI description at /openapi.json."""
    from typing import Annotated

    import anyio.to_thread
    import orjson
    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
    from starlette.exceptions import HTTPException as StarletteHTTPException

    config = service.config
    # Acceptance is as strict as the document: no number taken for a time, no
    # boolean for a number, no text for either (pydantic's lax mode would).
    Id = Annotated[str, Field(min_length=1, max_length=256, strict=True)]
    Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
    RequestTime = Annotated[
        datetime,
        BeforeValidator(_time_as_text),
        AfterValidator(_time_in_range),
        Field(
            description=f"ISO 8601 date-time in the years {TIME_YEARS_TEXT}",
            json_schema_extra={"pattern": TIME_YEARS_PATTERN},
        ),
    ]

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: Id
        k: Annotated[int, Field(ge=1, le=config.max_k), BeforeValidator(_json_integer)] | None = (
            Field(None, description="page length")
        )
        exclude: list[Id] = Field(
            default_factory=list, max_length=config.max_exclude, description="item ids not to show"
        )
        at: RequestTime | None = Field(None, description="request time; default now")

    class Item(BaseModel):
        model_config = ConfigDict(extra="allow")  # the item's category and creator, if any
        item_id: str
        score: float
        click_probability: float
        expected_watch_seconds: float
        retrieval_score: float = Field(
            description="the retrieval order's score: the two-tower's, or with several "
            "candidate sources their reciprocal rank fusion"
        )
        source: str = Field(description="the candidate source that ranked it highest")
        propensity: float = Field(
            description="probability this item is on this page under the serving policy "
            "(exploration); log it with the impression for off-policy evaluation"
        )

    class RecommendResponse(BaseModel):
        request_id: str
        user_id: str
        arm: str | None = Field(description="the experiment arm that served it, if any")
        known_user: bool
        versions: dict[str, int]
        items: list[Item]
        removed: dict[str, int]
        milliseconds: dict[str, float]

    class Event(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: Id
        item_id: Id
        ts: (
            Annotated[int, Field(ge=0, le=MAX_UNIX_SECONDS), BeforeValidator(_json_integer)] | None
        ) = Field(None, description="Unix seconds; default now")
        clicked: Annotated[bool, Field(strict=True)]
        watch_seconds: Number = Field(0.0, ge=0)

    class EventsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        events: list[Event] = Field(max_length=config.max_events)

    class EventsResponse(BaseModel):
        added: int = Field(description="engagements added to the users' online features")

    class Problem(BaseModel):
        where: str = Field(description="the field, e.g. body.k")
        problem: str

    class ErrorBody(BaseModel):
        error: str
        problems: list[Problem] | None = Field(None, description="with 422: what is wrong, where")

    class Liveness(BaseModel):
        alive: bool

    class Readiness(BaseModel):
        model_config = ConfigDict(extra="allow")  # the versions and the feature store
        ready: bool
        status: str

    # Every status a request can get besides 200, each with the same error body.
    def errors(*codes: int) -> dict:
        return {code: {"model": ErrorBody, "description": ERROR_STATUSES[code]} for code in codes}

    # The handlers admit at most max_in_flight requests and run each in a worker
    # thread, so the event loop stays free: a request past capacity is refused at
    # once (503, Retry-After) instead of queueing behind the others, and the probes
    # answer while the service is busy. Scale with processes.
    in_flight = 0  # admitted and not finished; read and written on the event loop only

    @contextlib.asynccontextmanager
    async def admitted(endpoint: str):
        nonlocal in_flight
        if in_flight >= config.max_in_flight:
            service.metrics.rejected.labels(endpoint).inc()
            raise HTTPException(
                503,
                f"at capacity: {config.max_in_flight} requests in progress; retry shortly",
                {"Retry-After": "1"},
            )
        in_flight += 1
        service.metrics.in_flight.set(in_flight)
        try:
            yield
        finally:
            in_flight -= 1
            service.metrics.in_flight.set(in_flight)

    async def authorized(request: Request) -> None:
        if not config.token:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.token}".encode()):
            challenge = {"WWW-Authenticate": "Bearer"}
            raise HTTPException(401, "missing or wrong bearer token", challenge)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        service.close()

    app = FastAPI(
        lifespan=lifespan,
        title="recsys-pipeline recommendation service",
        version="1",
        description="Retrieval -> ranking -> re-ranking with the models in the serving root.",
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    count = service.metrics.requests

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        count.labels(request.url.path, "422").inc()
        problems = [
            {"where": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]}
            for e in error.errors()
        ]
        return JSONResponse({"error": "invalid request", "problems": problems}, 422)

    # Starlette's class: FastAPI raises it too (a body that is not JSON: 400), and
    # every error then has the one documented body.
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        count.labels(request.url.path, str(error.status_code)).inc()
        return JSONResponse({"error": error.detail}, error.status_code, headers=error.headers)

    @app.post(
        "/v1/recommend",
        response_model=RecommendResponse,
        dependencies=[Depends(authorized)],
        responses=errors(400, 401, 413, 422, 503),
    )
    async def recommend(request: RecommendRequest):
        started = time.perf_counter()
        try:
            async with admitted("/v1/recommend"):
                body = await anyio.to_thread.run_sync(
                    service.recommend, request.user_id, _utc(request.at), request.k, request.exclude
                )
        except NotReady as error:
            raise HTTPException(503, str(error)) from None
        except FeatureStoreError as error:
            service.metrics.errors.labels("feature_store").inc()
            raise HTTPException(503, str(error)) from None
        serialize = time.perf_counter()
        content = orjson.dumps(body)
        done = time.perf_counter()
        service.metrics.latency.labels("serialize").observe(done - serialize)
        service.metrics.latency.labels("total").observe(done - started)
        count.labels("/v1/recommend", "200").inc()
        return Response(content, media_type="application/json")

    @app.post(
        "/v1/events",
        response_model=EventsResponse,
        dependencies=[Depends(authorized)],
        responses=errors(400, 401, 413, 422, 503),
    )
    async def events(request: EventsRequest) -> dict:
        try:
            async with admitted("/v1/events"):
                added = await anyio.to_thread.run_sync(
                    service.add_events, [event.model_dump() for event in request.events]
                )
        except FeatureStoreError as error:
            service.metrics.errors.labels("feature_store").inc()
            raise HTTPException(503, str(error)) from None
        count.labels("/v1/events", "200").inc()
        return {"added": added}

    @app.get("/healthz", response_model=Liveness)
    def healthz() -> dict:
        return {"alive": True}

    @app.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready: nothing loaded yet"}},
    )
    def readyz():
        ready = service.bundle is not None
        body = {"ready": ready, "status": service.status}
        if ready:
            body["versions"] = service.bundle.versions
            body["feature_store"] = service.bundle.feature_store
        return JSONResponse(body, 200 if ready else 503)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"description": "Prometheus' text exposition format"}},
    )
    def metrics():
        return PlainTextResponse(
            generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    return app


# The request times the service takes: years a pandas timestamp holds in any time
# zone. The document states them as a pattern on the text (JSON Schema bounds no
# date-time), so a client generated from it knows them too.
TIME_YEARS = (1970, 2261)
TIME_YEARS_TEXT = "1970 to 2261"
TIME_YEARS_PATTERN = r"^(19[7-9][0-9]|2[01][0-9][0-9]|22[0-5][0-9]|226[01])-"
MAX_UNIX_SECONDS = int(datetime(TIME_YEARS[1], 12, 31, tzinfo=timezone.utc).timestamp())
ERROR_STATUSES = {
    400: "the body is not JSON",
    401: "missing or wrong bearer token (when the service has one)",
    413: "the body is larger than the service takes",
    422: "the body does not match the schema: `problems` says where",
    503: "no version loaded yet, the feature store is down, or the service is at capacity "
    "(then with Retry-After)",
}


def _json_integer(value):
    """What JSON Schema calls an integer: a whole number, 2.0 included; never a
    boolean or text (pydantic's lax mode takes "2" and true)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("expected a whole number")
    return value


def _time_as_text(value):
    """A time arrives as ISO 8601 text: a number is not taken for one."""
    if value is not None and not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date-time string, e.g. 2026-01-19T20:00:00Z")
    return value


def _time_in_range(value: datetime) -> datetime:
    if not TIME_YEARS[0] <= value.year <= TIME_YEARS[1]:
        raise ValueError(f"expected a time in the years {TIME_YEARS_TEXT}")
    return value


def _utc(at: datetime | None) -> pd.Timestamp | None:
    if at is None:
        return None
    return pd.Timestamp(at if at.tzinfo else at.replace(tzinfo=timezone.utc)).tz_convert("UTC")


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets a 413 before it is read
    whole (by its Content-Length, or while it streams in without one)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send):
        body = json.dumps({"error": f"request body over {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
