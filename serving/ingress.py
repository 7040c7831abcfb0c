"""The `Ingress` deployment: validates a request, picks an arm by sticky weight, calls the model, keeps the
output contract (falling back to stable when the candidate fails it) and labels the answer; mirrors a sample
to the candidate, reports its counts to the rollout controller and follows its routing table. The operators'
routes (admin, report, metrics, dashboard) are in `serving.operator_routes`.
"""

import asyncio
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import ActorDiedError, RayActorError
from ray.serve.handle import DeploymentHandle

from models.artifact import InputSchema
from models.errors import InvalidInputError
from models.inputs import parse_request
from models.server import ModelOverloadedError
from rollout.controller import ensure_controller, find_controller, get_or_create_controller
from rollout.policy import rollout_key
from serving.config import IngressConfig, validate_section
from serving.errors import InvalidConfigError
from serving.fields import extract
from serving.http import (
    HotRoute,
    HTTPProblem,
    app,
    controller_silent,
    error_line,
    parse_json,
    read_body,
    render_json,
    unrenderable,
)
from serving.operator_routes import OperatorRoutes
from serving.operators import RequestLog, check_request_id, feedback_conflict, parse_feedback
from serving.routing import Arm, RoutingTable
from serving.segments import ALL, Segment, SegmentExtractor
from serving.shadow import ShadowMirror
from serving.telemetry import Window

logger = logging.getLogger("ray.serve")

FLUSH_INTERVAL_S = 1.0
# At shutdown (within the deployment's graceful_shutdown_timeout_s, after Serve has drained its requests):
# how long the mirrors still running may take, and the last flush of the counts to the controller.
SHUTDOWN_SHADOW_S = 3.0
SHUTDOWN_FLUSH_S = 3.0
CONTROLLER_GONE_S = 10.0  # the controller's name free this long: it is gone for good, and created again
WATCH_TIMEOUT_S = 30.0  # a long poll returns at least this often, so a replica notices a restarted controller
FORCE_ARM_HEADER = "X-Canary-Force-Arm"  # an operator's probe of one arm (admin token required)
REPLICA_RETRIES = 1  # a call whose replica died goes once more to a live one
MAX_PENDING_ROWS = 100_000  # request-log rows kept for the controller while it is unreachable
MAX_PENDING_LAGS = 1_000  # routing-table propagation times sent with one flush

# Headers a model replica never needs to see (fault injection scopes by the others).
_PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def _controller_args(config: IngressConfig) -> tuple[str, dict[str, Any]]:
    """The controller's store location and retention, from the Ingress config."""
    store = config.rollout.store
    retention = {
        "windows_s": store.windows_retention_s,
        "request_log_s": store.request_log_retention_s,
        "max_requests": store.max_logged_requests,
    }
    return store.location, retention


def _forced_arm(value: str) -> Arm:
    try:
        return Arm(value.strip().lower())
    except ValueError:
        raise HTTPProblem(
            422, "invalid_input", [{"field": FORCE_ARM_HEADER, "message": "expected stable or candidate"}]
        ) from None


class ConfigNotTakenError(RuntimeError):
    """The rollout controller has not taken this replica's config yet."""


@dataclass(frozen=True)
class Flush:
    """One flush of telemetry to the controller, as sent: its window carries ``seq`` (this replica's
    incarnation and the flush's number), so a copy of it is counted once."""

    window: dict[str, Any]
    requests: list[tuple[str, float, str, list[Segment]]]
    feedback: list[tuple[str, str, float, float, str, list[list[str]]]]
    lags: list[float]
    rollout: str | None


@dataclass(frozen=True)
class Outcome:
    """What one model call gave: an answer that keeps the contract, or why it did not."""

    arm: Arm
    status: str  # "ok" | "timeout" | "overloaded" | "error" | "contract"
    output: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    latency_s: float = 0.0
    body: bytes = b""  # an ok answer as sent: strict JSON, rendered once when it was checked

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_FAILURE_ANSWERS = {
    "timeout": (504, "model_timeout", "the {arm} model did not answer within {timeout}s"),
    "overloaded": (503, "model_overloaded", "the {arm} model ran out of device memory for this batch; retry"),
    "error": (503, "model_unavailable", "the {arm} model failed to answer; retry"),
    "contract": (502, "contract_violation", "the {arm} model's answer broke the output contract"),
}


@serve.deployment(max_ongoing_requests=200, graceful_shutdown_timeout_s=10)
@serve.ingress(app)
class Ingress(OperatorRoutes):
    """Routes each request to the stable or the candidate model and answers with the output contract.

    Args:
        stable: handle of the ``stable`` ModelServer deployment.
        candidate: handle of the ``candidate`` ModelServer deployment.
        input_schema: the models' shared input schema (from the artifacts' metadata).
        versions: ``{"stable": version, "candidate": version}`` from the artifacts' metadata.
    """

    def __init__(
        self,
        stable: DeploymentHandle,
        candidate: DeploymentHandle,
        input_schema: dict[str, Any],
        versions: dict[str, str],
    ) -> None:
        self._handles = {Arm.STABLE: stable, Arm.CANDIDATE: candidate}
        # `handle.predict` builds a new handle on every access; the prediction path keeps one per arm
        self._predict = {arm: handle.options(method_name="predict") for arm, handle in self._handles.items()}
        self._input_schema = InputSchema.model_validate(input_schema)
        self._versions = {Arm(arm): version for arm, version in versions.items()}
        self._config = IngressConfig()
        self._contract = self._config.contract.build()
        self._segments = SegmentExtractor(self._config.segments)
        self._table = RoutingTable()
        self._configured = False
        self._config_error: str | None = None
        self._rng = random.Random()
        self._window = Window(start=time.time())  # counts since the last flush to the controller
        self._shadow = ShadowMirror(self._window, self._call_candidate_batch, self._record, self._rng)
        context = serve.get_replica_context()
        self._app = context.app_name
        self._replica_id = context.replica_id.unique_id
        self._controller: Any = None  # created at the first reconfigure, which knows the store path
        self._controller_gone_since: float | None = None
        self._rollout_key: str | None = None  # the rollout this replica serves under, sent with its counts
        self._flusher: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._flush_failures = 0
        self._incarnation = uuid.uuid4().hex  # with a flush's number, names it to the controller
        self._flushes = 0
        self._unsent: Flush | None = None  # a flush not yet taken, sent again unchanged before anything newer
        self._controller_table: dict[str, Any] = {}  # the last table followed: this replica's rollout
        self._seen_version = -1  # the controller's last table version, followed or not
        self._user_config: dict[str, Any] = {}  # the config this replica runs, as deployed
        self._config_taken = True  # False while the controller has not taken it: the watcher offers it again
        self._config_pending: str | None = None  # why it has not, for GET /rollout
        self._offering = asyncio.Lock()  # offers in order, each of the latest config
        self._requests = RequestLog()
        self._pending_requests: list[tuple[str, float, str, list[Segment]]] = []
        self._pending_feedback: list[tuple[str, str, float, float, str, list[list[str]]]] = []
        self._pending_lags: list[float] = []
        self._admin_token: str | None = None

    def __serve_build_asgi_app__(self) -> HotRoute:
        """The replica's ASGI app, which Serve asks for once the constructor has run: ``POST /predict``
        straight to `predict`, every other route through the FastAPI app. (Were a Serve not to ask, the
        FastAPI app's own ``/predict`` route would answer, the same way.)"""
        return HotRoute(app, "POST", "/predict", self.predict)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Takes a new Ingress ``user_config``; an invalid one on a running replica is refused and logged.

        Raising here on a running replica would make Serve replace it with replicas that cannot start, so
        the running routing stays and the refusal shows in ``GET /rollout`` as ``config_error``. A valid one
        goes to the controller, whose routing table this replica then follows (in manual mode the config's
        weights apply at once, so routing never waits for the controller).
        """
        try:
            config = validate_section(IngressConfig, user_config, source="Ingress user_config")
        except InvalidConfigError as exc:
            if not self._configured:
                raise
            self._config_error = str(exc)
            logger.error(
                "%s\nkeeping the running rollout (candidate_weight=%s)",
                exc,
                self._config.rollout.candidate_weight,
            )
            return
        key = rollout_key(
            self._app, config.rollout.rollout_id, {a.value: v for a, v in self._versions.items()}
        )
        if self._controller is not None and key != self._rollout_key:
            await self._flush()  # what was served under the previous rollout is counted for it
        previous_key, self._rollout_key = self._rollout_key, key
        if key != previous_key:
            # The table followed was another rollout's: the controller's next table for this key applies even
            # if it has a version seen before (a redeploy of the previous config gets its table back as is).
            self._controller_table, self._seen_version = {}, -1
        previous = self._config
        self._config = config
        self._config_error = None
        self._configured = True
        if config.contract != previous.contract:
            self._contract = config.contract.build()
        if config.segments != previous.segments:
            self._segments = SegmentExtractor(config.segments)
        elif key != previous_key:
            self._segments.renew_budget()  # a new rollout's evidence may name values of its own
        self._shadow.max_in_flight = config.rollout.shadow_max_in_flight
        self._shadow.batch_size = config.rollout.shadow_batch_size
        self._shadow.batch_wait_s = config.rollout.shadow_batch_wait_s
        if config.rollout.mode == "manual":
            self._route(config.rollout.weight, config.rollout.shadow)
        elif key != previous_key:  # a new automatic rollout: stable only until its controller says more
            self._route(0.0, 0.0)
        store = config.rollout.store
        if self._controller is None or store != previous.rollout.store:
            # one running other code (an upgrade) or keeping another store is replaced: see ensure_controller
            self._controller = await ensure_controller(self._app, *_controller_args(config))
        self._user_config = user_config
        self._ensure_tasks()
        await self._offer()

    async def _offer(self) -> bool:
        """Gives the config to the controller and follows its table; one not taken (the controller is
        restarting, its store does not answer) is offered again by the watcher until it is. Meanwhile a
        manual config's weights apply, an automatic rollout new to this replica sends everything to stable,
        and tables of another rollout are not followed."""
        async with self._offering:
            try:
                table = await asyncio.wait_for(
                    self._controller.configure.remote(
                        self._user_config, {a.value: v for a, v in self._versions.items()}
                    ),
                    10,
                )
            except Exception as exc:
                await self._follow_controller(exc)
                if self._config_taken:
                    logger.warning(
                        "the rollout controller did not take the config yet, offering it again: %r", exc
                    )
                self._config_taken = False
                self._config_pending = (
                    "the rollout controller has not taken this config yet (it is offered again every few "
                    f"seconds): {error_line(exc)}"
                )
                return False
            if not self._config_taken:
                logger.info("the rollout controller took the config")
            self._config_taken, self._config_pending = True, None
            self._follow(table)
            return True

    def _route(self, weight: float, shadow_percent: float) -> None:
        self._shadow.percent = shadow_percent
        if weight != self._table.candidate_weight:
            self._table = RoutingTable(weight, self._table.version + 1)
            logger.info("routing: candidate_weight=%s%% shadow_percent=%s%%", weight, shadow_percent)

    def _follow(self, table: dict[str, Any]) -> None:
        """Applies the controller's routing table when it is new to this replica and for its rollout (while
        a redeploy rolls out, or before the controller took this replica's config, it may be another's)."""
        self._seen_version = int(table.get("version", -1))
        if table.get("key") != self._rollout_key:
            return
        if table.get("version") == self._controller_table.get("version") and table.get(
            "key"
        ) == self._controller_table.get("key"):
            return
        self._controller_table = table
        self._route(float(table["candidate_weight"]), float(table["shadow_percent"]))

    def _ensure_tasks(self) -> None:
        loop = asyncio.get_running_loop()
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush_loop())
        if self._controller is not None and (self._watcher is None or self._watcher.done()):
            self._watcher = loop.create_task(self._watch_loop())

    async def _watch_loop(self) -> None:
        """Long-polls the controller for routing tables; unreachable, it keeps the last one and retries."""
        failures = 0
        while True:
            try:
                if not self._config_taken and not await self._offer():
                    raise ConfigNotTakenError("the rollout controller has not taken this replica's config")
                asked = time.time()
                table = await asyncio.wait_for(
                    self._controller.watch.remote(self._seen_version, WATCH_TIMEOUT_S),
                    WATCH_TIMEOUT_S + 10,
                )
                published = float(table.get("published_at", 0.0))
                before = self._controller_table
                self._follow(table)
                if self._controller_table is not before and published >= asked:  # a true push
                    self._pending_lags.append(time.time() - published)
                failures = 0
            except Exception as exc:
                await self._follow_controller(exc)
                failures += 1
                if failures in (1, 10, 100):
                    logger.warning(
                        "routing-table watch failed %d time(s), keeping the last table: %r", failures, exc
                    )
                await asyncio.sleep(min(0.2 * failures, 2.0))

    @app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        """Answers with the chosen arm's output. ``X-Request-Id`` is added by Serve's proxy (its own request
        id, which the request context here carries too), so it is not set again: a client sees one id."""
        self._ensure_tasks()
        try:
            rollout = self._config.rollout
            check_request_id(request.headers.get("x-request-id"))
            raw = await read_body(request, rollout.max_body_bytes)
            body = parse_json(raw)
            try:
                inputs = parse_request(self._input_schema, body)
            except InvalidInputError as exc:
                raise HTTPProblem(422, "invalid_input", exc.errors) from None
            headers = {k: v for k, v in request.headers.items() if k not in _PRIVATE_HEADERS}
            forced = request.headers.get(FORCE_ARM_HEADER)
            if forced is not None:
                # an operator's probe of one arm: token required, no fallback, kept out of the numbers
                self._check_admin(request)
                outcome, fallback_reason = await self._call(_forced_arm(forced), inputs, headers), None
            else:
                arm = self._table.choose(self._routing_key(request, body), self._rng)
                segments = self._segments.segments(headers, body, request.scope["path"], len(raw))
                outcome, fallback_reason = await self._serve(arm, inputs, headers, segments)
            if not outcome.ok:
                raise self._failure(outcome)
        except HTTPProblem as problem:
            return problem.response()
        assert outcome.output is not None
        if forced is None:
            self._log_request(outcome.arm.value, segments)
        answer_headers = {
            "X-Model-Version": self._model_version(outcome),
            "X-Canary-Arm": outcome.arm.value,
        }
        if fallback_reason:
            answer_headers["X-Canary-Fallback"] = fallback_reason
        return Response(outcome.body, headers=answer_headers, media_type="application/json")

    def _model_version(self, outcome: Outcome) -> str:
        """The answer's own ``model_version`` when it has one that can go in a header, else the version
        deployed on the arm that answered (a contract need not require the field)."""
        version = (outcome.output or {}).get("model_version")
        if isinstance(version, str) and version and version.isascii() and version.isprintable():
            return version
        return self._versions[outcome.arm]

    async def _serve(
        self, arm: Arm, inputs: dict[str, Any], headers: dict[str, str], segments: list[Segment]
    ) -> tuple[Outcome, str | None]:
        """Calls the chosen arm (mirroring to the candidate when sampled) and falls back when it fails."""
        stable_answer: asyncio.Future[Outcome | None] | None = None
        if arm is Arm.STABLE and self._shadow.sampled():
            stable_answer = asyncio.get_running_loop().create_future()
            self._shadow.mirror(inputs, headers, stable_answer, segments)
        outcome: Outcome | None = None
        try:
            outcome = await self._call(arm, inputs, headers)
        finally:
            if stable_answer is not None:  # the mirror waits for it, so resolve it whatever happens
                stable_answer.set_result(outcome)
        self._record(arm.value, outcome, segments)
        if arm is Arm.CANDIDATE and not outcome.ok and self._config.rollout.fallback:
            self._count_fallback(segments)
            reason = outcome.status
            outcome = await self._call(Arm.STABLE, inputs, headers)
            self._record(Arm.STABLE.value, outcome, segments)
            return outcome, reason
        return outcome, None

    def _log_request(self, arm: str, segments: list[Segment]) -> None:
        """Remembers which arm answered, so POST /feedback can join a score to it."""
        request_id = serve.context._get_serve_request_context().request_id
        if not request_id:
            return
        now = time.time()
        self._requests.add(request_id, arm, now, segments)
        if len(self._pending_requests) < MAX_PENDING_ROWS:
            self._pending_requests.append((request_id, now, arm, segments))

    def _record(self, arm: str, outcome: Outcome, segments: list[Segment]) -> None:
        values = (
            extract(self._config.fields, outcome.output) if self._config.fields and outcome.output else None
        )
        self._window.arm(arm, ALL).record(outcome.status, outcome.latency_s, values)
        for segment in segments:
            self._window.arm(arm, segment).record(outcome.status, outcome.latency_s, values)

    def _count_fallback(self, segments: list[Segment]) -> None:
        for segment in [ALL, *segments]:
            self._window.arm(Arm.CANDIDATE.value, segment).fallbacks += 1

    def _routing_key(self, request: Request, body: Any) -> str | None:
        spec = self._config.rollout.routing_key
        key = request.headers.get(spec.header)
        if not key and spec.body_field and isinstance(body, dict):
            value = body.get(spec.body_field)
            key = str(value) if value is not None else None
        return key or None

    async def _call_candidate_batch(
        self, items: list[tuple[dict[str, Any], dict[str, str]]]
    ) -> list[Outcome]:
        """Mirrored requests to the candidate in one handle call; one outcome per item, in order."""
        rollout = self._config.rollout
        timeout = rollout.shadow_timeout_s or rollout.timeouts_s.candidate
        started = time.perf_counter()
        response = self._handles[Arm.CANDIDATE].predict_many.remote(
            [i for i, _ in items], [h for _, h in items]
        )
        try:
            async with asyncio.timeout(timeout):
                answers = await response
        except TimeoutError:
            response.cancel()
            return [Outcome(Arm.CANDIDATE, "timeout", latency_s=time.perf_counter() - started)] * len(items)
        except asyncio.CancelledError:  # the replica is shutting down past the shadow's drain
            response.cancel()
            raise
        latency = time.perf_counter() - started
        return [
            Outcome(Arm.CANDIDATE, answer["__error__"], latency_s=latency)
            if isinstance(answer, dict) and "__error__" in answer
            else self._checked(Arm.CANDIDATE, answer, latency)
            for answer in answers
        ]

    def _checked(self, arm: Arm, output: Any, latency: float) -> Outcome:
        """The contract's verdict on an answer; one that cannot be sent as strict JSON (NaN or infinity in a
        field the contract does not check, a value JSON has no form for) breaks it too."""
        problems = self._contract.violations(output)
        if not problems:
            try:
                body = render_json(output)
            except (TypeError, ValueError, RecursionError) as exc:
                problems = [unrenderable(output, exc)]
            else:
                return Outcome(arm, "ok", output, latency_s=latency, body=body)
        return Outcome(arm, "contract", output if isinstance(output, dict) else None, problems, latency)

    async def _call(self, arm: Arm, inputs: dict[str, Any], headers: dict[str, str]) -> Outcome:
        timeout = getattr(self._config.rollout.timeouts_s, arm.value)
        started = time.perf_counter()
        attempt = 0
        while True:
            response = self._predict[arm].remote(inputs, headers)
            try:
                # asyncio.timeout, unlike wait_for, does not wrap the response in a task of its own
                async with asyncio.timeout(timeout - (time.perf_counter() - started)):
                    output = await response
                break
            except RayActorError as exc:
                # the replica died under the request (killed, node lost): a prediction is idempotent, so it
                # goes once more to a live replica of the same arm, within the same time-out
                attempt += 1
                if attempt > REPLICA_RETRIES or time.perf_counter() - started >= timeout:
                    return Outcome(
                        arm, "error", problems=[type(exc).__name__], latency_s=time.perf_counter() - started
                    )
            except TimeoutError:
                response.cancel()  # wait_for alone leaves the downstream call running
                return Outcome(arm, "timeout", latency_s=time.perf_counter() - started)
            except ModelOverloadedError:
                return Outcome(arm, "overloaded", latency_s=time.perf_counter() - started)
            except Exception as exc:  # any failure of the model call is the model's, never the client's
                logger.debug("%s call failed: %r", arm.value, exc)
                return Outcome(
                    arm, "error", problems=[type(exc).__name__], latency_s=time.perf_counter() - started
                )
        return self._checked(arm, output, time.perf_counter() - started)

    def _failure(self, outcome: Outcome) -> HTTPProblem:
        status, error, template = _FAILURE_ANSWERS[outcome.status]
        timeout = getattr(self._config.rollout.timeouts_s, outcome.arm.value)
        detail = template.format(arm=outcome.arm.value, timeout=timeout)
        if outcome.problems and outcome.status == "contract":
            detail += ": " + "; ".join(outcome.problems)
        return HTTPProblem(status, error, detail)

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 when the stable model answers its info call within 5 s; 503 otherwise."""
        response = self._handles[Arm.STABLE].info.remote()
        try:
            info = await asyncio.wait_for(response, 5.0)
        except Exception as exc:
            if isinstance(exc, TimeoutError):
                response.cancel()
            return JSONResponse(
                {"status": "unavailable", "detail": f"stable model: {type(exc).__name__}"}, status_code=503
            )
        return JSONResponse({"status": "ok", "stable": info["model_version"]})

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            await self._flush()

    async def __del__(self) -> None:
        """Serve awaits this once, at graceful shutdown, after the replica's requests have finished: the
        mirrors still queued or running get `SHUTDOWN_SHADOW_S` (the rest are cancelled and counted failed),
        then the counts since the last flush go to the controller, so replacing or scaling down an Ingress
        replica loses neither its last second of telemetry nor a mirror's result."""
        async with self._flush_lock:  # a periodic flush in progress finishes first; none starts after
            for task in (self._flusher, self._watcher):
                if task is not None:
                    task.cancel()
        cancelled = await self._shadow.drain(SHUTDOWN_SHADOW_S)
        if cancelled:
            logger.warning("shutdown: %d mirrored request(s) still running were cancelled", cancelled)
        await self._flush(SHUTDOWN_FLUSH_S)
        if self._flush_failures:
            logger.warning("shutdown: the last telemetry flush did not reach the controller")

    async def _flush(self, timeout_s: float = 10.0) -> None:
        """Sends the counts since the last flush to the controller. A flush that fails is sent again,
        unchanged and under its number, before anything newer, so the controller can drop a copy when the
        first call did reach it (a call that times out here may still run there); then the counts since."""
        async with self._flush_lock:
            if self._controller is None:
                return
            for _ in range(2):  # an earlier flush first, then what was served since
                retry = self._unsent is not None
                if self._unsent is None:
                    self._unsent = self._next_flush()
                if not await self._send(self._unsent, timeout_s):
                    return
                self._unsent = None
                if not retry:
                    return

    def _next_flush(self) -> Flush:
        now = time.time()
        delta, self._window = self._window, Window(start=now)
        self._shadow.window = self._window
        delta.end = now
        self._flushes += 1
        flush = Flush(
            {**delta.to_dict(), "seq": [self._incarnation, self._flushes]},
            self._pending_requests,
            self._pending_feedback,
            self._pending_lags[-MAX_PENDING_LAGS:],
            self._rollout_key,
        )
        self._pending_requests, self._pending_feedback, self._pending_lags = [], [], []
        return flush

    async def _send(self, flush: Flush, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(
                self._controller.ingest.remote(
                    self._replica_id,
                    flush.window,
                    self._shadow.in_flight,
                    flush.requests,
                    flush.feedback,
                    flush.lags,
                    rollout=flush.rollout,
                ),
                timeout_s,
            )
        except Exception as exc:  # the controller restarts or is busy: the flush is sent again next time
            await self._follow_controller(exc)
            self._flush_failures += 1
            if self._flush_failures in (1, 10, 100):
                logger.warning(
                    "telemetry flush to the controller failed %d time(s): %r", self._flush_failures, exc
                )
            return False
        self._flush_failures = 0
        return True

    async def _follow_controller(self, exc: Exception) -> None:
        """A controller that another replica replaced (an upgrade, a new store) is a new actor under the same
        name: a call to the old one fails for good, so the name is looked up again. One gone for good
        (killed by hand, say) is created again once its name has been free for `CONTROLLER_GONE_S`, to
        resume from the store (a replacement leaves it free for well under a second)."""
        if not isinstance(exc, ActorDiedError):
            return
        found = await asyncio.to_thread(find_controller, self._app)
        if found is not None:
            self._controller, self._controller_gone_since = found, None
            return
        now = time.monotonic()
        if self._controller_gone_since is None:
            self._controller_gone_since = now
        elif now - self._controller_gone_since >= CONTROLLER_GONE_S:
            logger.warning("the rollout controller is gone; creating it again (it resumes from the store)")
            self._controller = get_or_create_controller(self._app, *_controller_args(self._config))
            self._controller_gone_since = None

    def _rollout_state(self) -> dict[str, Any]:
        """What this replica routes by now (the controller's table, or the manual config's weights)."""
        return {
            "mode": self._controller_table.get("mode", self._config.rollout.mode),
            "stage": self._controller_table.get("stage", "manual"),
            "candidate_weight": self._table.candidate_weight,
            "shadow_percent": self._shadow.percent,
        }

    @app.get("/rollout", response_model=None)
    async def rollout(self) -> dict[str, Any] | JSONResponse:
        """The rollout and its numbers, merged over every Ingress and model replica by the controller."""
        self._ensure_tasks()
        await self._flush()
        rollout = self._config.rollout
        try:
            merged = await asyncio.wait_for(self._controller.snapshot.remote(), 10)
        except Exception as exc:
            return controller_silent(exc)
        arms = merged["arms"]
        return {
            **merged["rollout"],
            **self._rollout_state(),
            "routing_table_version": self._table.version,
            "fallback": rollout.fallback,
            "timeouts_s": rollout.timeouts_s.model_dump(),
            "arms": {
                arm.value: {
                    "deployment": arm.value,
                    "model_version": self._versions[arm],
                    "stats": arms[arm.value],
                }
                for arm in Arm
            },
            "shadow": {
                **merged["shadow"],
                "in_flight": merged["shadow_in_flight"],
                "max_in_flight": rollout.shadow_max_in_flight,
                "stats": arms["shadow"],
            },
            "segments": merged["segments"],
            "replicas": merged["replicas"],
            "oom_events": merged["oom_events"],
            "restarts": merged["restarts"],
            "since": merged["since"],
            "config_error": self._config_error,
            "config_pending": self._config_pending,
        }

    @app.post("/feedback")
    async def feedback(self, request: Request) -> JSONResponse:
        """``{request_id, metric, value}``: a score for an answer, joined to the arm that served it."""
        try:
            body = parse_json(await read_body(request, 64 * 1024))
            request_id, metric, value = parse_feedback(body)
            metrics = self._config.rollout.feedback_metrics
            if metric not in metrics:
                raise HTTPProblem(
                    422,
                    "invalid_input",
                    [{"field": "metric", "message": f"unknown metric; expected one of {list(metrics)}"}],
                )
            now = time.time()
            served = self._requests.find(request_id, now)
            if served is not None:
                answer: dict[str, Any] = {
                    "request_id": request_id,
                    "arm": served.arm,
                    "metric": metric,
                    "value": value,
                }
                earlier = self._requests.given(served, metric)
                if earlier is not None and earlier != value:
                    raise HTTPProblem(
                        409,
                        "feedback_exists",
                        [{"field": "value", "message": feedback_conflict(metric, earlier)}],
                    )
                if earlier is not None:
                    return JSONResponse({**answer, "duplicate": True})
                # counted in the evidence by the controller once stored, so a value sent twice counts once
                self._requests.give(served, metric, value)
                if len(self._pending_feedback) < MAX_PENDING_ROWS:  # else the controller has been gone long
                    self._pending_feedback.append(
                        (request_id, metric, value, now, served.arm, [list(s) for s in served.segments])
                    )
                return JSONResponse(answer)
            if self._controller is None:
                raise HTTPProblem(404, "unknown_request_id", f"unknown request_id {request_id!r}")
        except HTTPProblem as problem:
            return problem.response()
        try:
            status, answer = await asyncio.wait_for(
                self._controller.feedback.remote(request_id, metric, value), 10
            )
        except Exception as exc:  # no answer in time, or the controller is restarting
            return controller_silent(exc)
        return JSONResponse(answer, status_code=status)
