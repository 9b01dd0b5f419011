"""The application factory: builds the store, driver, engine and workers in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from callbridge.api import (
    callbacks_routes,
    calls_routes,
    dashboard_routes,
    exophones_routes,
    health,
    metrics_routes,
    openapi,
    recordings_routes,
    sim_routes,
    users_routes,
    v1_routes,
    v2_calls_routes,
    v2beta_routes,
)
from callbridge.api.auth import Authenticator, RateLimiter
from callbridge.api.auth_throttle import ThrottlePolicy
from callbridge.api.envelope import failure
from callbridge.api.idempotency import IdempotencyStore
from callbridge.api.middleware import EnvelopeMiddleware
from callbridge.api.services import Services, request_id
from callbridge.api.v1_dialect import LegacyPathMiddleware, error_response, is_legacy_path
from callbridge.clock import Clock, SystemClock
from callbridge.config import ConfigError, apply_config, load_config
from callbridge.config_sim import SimNumberConfig, apply_sim_numbers
from callbridge.dashboard.live import LiveHub
from callbridge.domain.calls import Call, Direction
from callbridge.domain.options import CallOptions, without_userinfo
from callbridge.engine.core import CallEngine
from callbridge.engine.lease import NodeLease, new_node_id
from callbridge.engine.media import CallMediaSession, MediaServices
from callbridge.engine.reconciler import Reconciler
from callbridge.errors import (
    AccountSidMissing,
    CallbridgeError,
    LegsCallNotFound,
    MethodNotAllowed,
    NotFound,
    ValidationFailed,
)
from callbridge.gcpolicy import GcPolicy
from callbridge.media.links import RecordingLinks
from callbridge.media.service import RecordingService, build_storage
from callbridge.metrics import Metrics
from callbridge.registrar.server import start_registrar
from callbridge.settings import Settings
from callbridge.store.repo import Store, describe_db_error
from callbridge.store.schema import ensure_schema
from callbridge.tasks import cancel_and_wait
from callbridge.telephony.base import TelephonyDriver
from callbridge.telephony.sim import SimulatedCarrier
from callbridge.webhooks.ssrf import WS_SCHEMES, PinnedTransport, UrlGuard
from callbridge.webhooks.worker import DeliveryWorker

log = logging.getLogger(__name__)

_MISSING_ACCOUNT = re.compile(r"^/v[23]/accounts(//|/?$|/(calls|users)(/|$))")
"""An API path with no account sid in it (`/v3/accounts//calls/…`, `/v2/accounts/users`)."""
_MISSING_CALL_LEGS = re.compile(r"^/v3/accounts/[^/]+/calls//legs$")


DATABASE_RETRY_FIRST_S = 0.5
DATABASE_RETRY_MAX_S = 10.0
"""While the database cannot be reached at start, connect again with this backoff."""


def build_driver(settings: Settings, clock: Clock) -> TelephonyDriver:
    if settings.driver == "sip":
        from callbridge.telephony.sip import SipDriver

        return SipDriver(settings)
    return SimulatedCarrier(clock, media=_sim_media(clock))


def _sim_media(clock: Clock) -> Any:
    try:
        from callbridge.telephony.sim_media import SimMediaPlane
    except ImportError:
        return None
    return SimMediaPlane(clock)


def needs_media(options: CallOptions) -> bool:
    """Plain calls skip the media session entirely."""
    return bool(
        options.recording.record
        or options.wait_audio_url
        or options.playback
        or options.streaming is not None
    )


def create_app(
    settings: Settings,
    *,
    driver: TelephonyDriver | None = None,
    store: Store | None = None,
    clock: Clock | None = None,
    node_id: str | None = None,
    run_background: bool = True,
    sim_numbers: Sequence[SimNumberConfig] = (),
) -> FastAPI:
    """Build the ASGI app. Nothing is opened until the lifespan starts.

    `sim_numbers` are simulated phone behaviours from a config file already applied to the
    database by the caller; a `settings.config` file is applied here, its behaviours too."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_clock = clock or SystemClock()
        the_store = store or Store(settings.resolved_database_url())
        owns_store = store is None

        async def start() -> Callable[[], Awaitable[None]]:
            """Everything after the schema: returns the matching stop."""
            behaviours = list(sim_numbers)
            if settings.config is not None:
                config = load_config(
                    settings.config, default_rate_limit=settings.default_rate_limit_per_minute
                )
                await apply_config(
                    the_store, config, the_clock, sip_realm=settings.sip_registrar_realm
                )
                behaviours += config.sim_numbers
            the_driver = driver or build_driver(settings, the_clock)
            if behaviours and isinstance(the_driver, SimulatedCarrier):
                apply_sim_numbers(the_driver, behaviours)
            elif behaviours:
                log.info("config sim.numbers ignored: the driver is not sim")
            the_node = node_id or new_node_id()
            svc_holder: dict[str, Services] = {}

            def recording_url(account_sid: str, rid: str) -> str:
                return svc_holder["svc"].recording_url(rid, account_sid)

            guard = UrlGuard(settings.allow_private_urls)
            media_http = httpx.AsyncClient(
                transport=PinnedTransport(guard),
                follow_redirects=False,
                timeout=httpx.Timeout(10.0),
            )
            # One key for the links this process mints (responses, callbacks) and checks.
            signing_key = RecordingService.key_from(settings)
            links = RecordingLinks.from_settings(settings, signing_key)
            recordings = RecordingService(
                store=the_store,
                storage=build_storage(settings, media_http),
                clock=the_clock,
                signing_key=signing_key,
                retention_days=settings.recordings_retention_days,
            )

            async def check_stream_url(url: str) -> object:
                return await guard.check(without_userinfo(url), WS_SCHEMES)

            media_services = MediaServices.from_settings(
                settings,
                http=media_http,
                url_guard=guard.check,
                stream_url_guard=check_stream_url,
                storage=recordings.storage,
                on_stream=metrics.track_stream,
            )

            def media_factory(call: Call, options: CallOptions) -> CallMediaSession | None:
                if not needs_media(options):
                    return None
                return CallMediaSession(
                    the_driver,
                    the_clock,
                    call.sid,
                    call.account_sid,
                    call.from_uri,
                    call.to_uri or "",
                    options,
                    media_services,
                    # Agents are `to` legs when a flow routes the call (inbound, or v1's
                    # connect-to-flow), the `from` leg of a click-to-call.
                    agent_leg=(
                        "from"
                        if call.direction is Direction.OUTBOUND and call.app_id is None
                        else "to"
                    ),
                )

            lease = NodeLease(
                store=the_store,
                clock=the_clock,
                ttl_s=settings.lease_ttl_s,
                interval_s=settings.heartbeat_interval_s,
                node_id=the_node,
            )
            engine = CallEngine(
                store=the_store,
                driver=the_driver,
                clock=the_clock,
                lease=lease,
                recording_url=recording_url,
                media_factory=media_factory,
                save_recordings=recordings.save,
            )
            svc = Services(
                settings=settings,
                store=the_store,
                clock=the_clock,
                driver=the_driver,
                engine=engine,
                auth=Authenticator(
                    the_store,
                    clock=the_clock.monotonic,
                    policy=ThrottlePolicy(
                        window_s=settings.auth_failure_window_s,
                        max_failures_per_address=settings.auth_max_failures_per_address,
                        max_failures_per_key=settings.auth_max_failures_per_key,
                    ),
                ),
                rate_limiter=RateLimiter(),
                idempotency=IdempotencyStore(the_store, settings.idempotency_ttl_s),
                guard=guard,
                metrics=metrics,
                sim=the_driver if isinstance(the_driver, SimulatedCarrier) else None,
                links=links,
            )
            svc_holder["svc"] = svc
            app.state.services = svc
            lease.on_lost = engine.end_all_calls
            reconciler = Reconciler(
                store=the_store,
                clock=the_clock,
                lease=lease,
                reconcile_interval_s=settings.reconcile_interval_s,
            )
            worker = DeliveryWorker.from_settings(
                settings, the_store.write_engine, the_clock, the_node, guard=guard, links=links
            )
            engine.on_committed = worker.wake
            reconciler.on_committed = worker.wake
            engine.add_listener(metrics.observe_call)
            worker.on_attempt = metrics.callback_attempt
            svc.extras["worker"] = worker
            svc.extras["reconciler"] = reconciler
            svc.extras["lease"] = lease
            svc.extras["recordings"] = recordings
            svc.extras["media_http"] = media_http
            from callbridge.engine import inbound

            inbound.install(svc)
            # The lease first, renewed on its own task from now on: nothing the node does at
            # start (ending a previous life's calls can take a while) may let it lapse.
            await lease.register()
            if run_background:
                lease.start()
            registrar = await start_registrar(settings, the_store, the_clock, the_driver)
            svc.extras["registrar"] = registrar
            await engine.start()
            if not run_background:
                await reconciler.reconcile_once()
            gc_policy = GcPolicy()
            worker_task: asyncio.Task[None] | None = None
            if run_background and settings.callbacks_in_process:
                worker_task = asyncio.create_task(worker.run(), name="callback-worker")
            if run_background:
                reconciler.start()
                recordings.start()
                gc_policy.start()
            svc.ready = True
            log.info("callbridge started", extra={"node": the_node, "driver": the_driver.name})

            async def stop() -> None:
                svc.ready = False
                hub = svc.extras.get(dashboard_routes.HUB_KEY)
                if isinstance(hub, LiveHub):
                    # Its pumps read the database: stop them before the store goes away.
                    await hub.close()
                await reconciler.stop()
                if registrar is not None:
                    await registrar.stop()
                await engine.stop()
                await gc_policy.stop()
                await lease.stop()
                if worker_task is not None:
                    await worker.stop()
                    with contextlib.suppress(asyncio.CancelledError):
                        await worker_task
                await worker.aclose()
                await recordings.stop()
                await media_http.aclose()
                log.info("callbridge stopped", extra={"node": the_node})

            return stop

        stopper: list[Callable[[], Awaitable[None]]] = []

        async def start_when_the_database_answers() -> None:
            delay_s = DATABASE_RETRY_FIRST_S
            while True:
                await the_clock.sleep(delay_s)
                try:
                    await ensure_schema(the_store)
                    break
                except Exception as exc:
                    delay_s = min(delay_s * 2, DATABASE_RETRY_MAX_S)
                    log.warning(
                        "database unreachable; not ready, retrying",
                        extra={"error": describe_db_error(exc), "retry_in_s": delay_s},
                    )
            log.info("database reachable; starting")
            try:
                stopper.append(await start())
            except ConfigError as exc:
                log.error("config cannot be applied; not ready", extra={"error": str(exc)})

        retry: asyncio.Task[None] | None = None
        try:
            await ensure_schema(the_store)
        except Exception as exc:
            # Serve /healthz and a 503 /readyz meanwhile, as orchestrators expect.
            log.warning(
                "database unreachable at start; not ready, retrying",
                extra={"error": describe_db_error(exc)},
            )
            retry = asyncio.create_task(start_when_the_database_answers(), name="start-retry")
        else:
            stopper.append(await start())
        try:
            yield
        finally:
            await cancel_and_wait(retry)
            for stop in stopper:
                await stop()
            if owns_store:
                await the_store.close()

    app = FastAPI(
        title="callbridge",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        # EnvelopeMiddleware drops a trailing slash instead; a bare redirect has no envelope.
        redirect_slashes=False,
    )
    app.state.metrics = metrics
    app.add_middleware(
        EnvelopeMiddleware,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics if settings.metrics_enabled else None,
    )
    app.add_middleware(LegacyPathMiddleware)
    routers = [
        health.router,
        calls_routes.router,
        callbacks_routes.router,
        recordings_routes.router,
        users_routes.router,
        v2_calls_routes.router,
        exophones_routes.router,
        dashboard_routes.router,
        v1_routes.router,
        v2beta_routes.router,
    ]
    if settings.metrics_enabled:
        routers.append(metrics_routes.metrics_router(metrics, settings.metrics_token))
    if settings.driver == "sim":
        routers.append(sim_routes.router)
    for router in routers:
        app.include_router(router)
    metrics.learn_routes([*app.router.routes, *(r for router in routers for r in router.routes)])
    openapi.install(app)

    def answer(request: Request, error: CallbridgeError) -> Response:
        return error_response(request.url.path, request_id(request), request.method, error)

    @app.exception_handler(CallbridgeError)
    async def _callbridge_error(request: Request, exc: CallbridgeError) -> Response:
        return answer(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        error: CallbridgeError
        if exc.status_code == 404 and is_legacy_path(request.url.path):
            error = NotFound(f"no such resource: {request.url.path[:128]}")
        elif exc.status_code == 404 and _MISSING_CALL_LEGS.match(request.url.path):
            error = LegsCallNotFound("the path must name the call: …/calls/{call_sid}/legs")
        elif exc.status_code == 404 and _MISSING_ACCOUNT.match(request.url.path):
            error = AccountSidMissing(
                "the path must name the account: /v3/accounts/{account_sid}/…"
            )
        elif exc.status_code == 404:
            error = NotFound(f"no such resource: {request.url.path[:128]}")
        elif exc.status_code == 405:
            allowed = openapi.allowed_methods(app, request.url.path)
            error = MethodNotAllowed(
                f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
            )
            response = failure(request_id(request), request.method, error)
            response.headers["Allow"] = ", ".join(allowed)
            return response
        else:
            error = CallbridgeError(str(exc.detail))
            error.http_status = exc.status_code
            error.code = exc.status_code
        return answer(request, error)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        parts = [str(p) for p in first.get("loc", ())]
        if is_legacy_path(request.url.path) and parts[:1] in (["body"], ["query"]):
            parts = parts[1:]  # v1 names the form field alone, as its docs do
        return answer(request, ValidationFailed(f"{'.'.join(parts)}: {first['msg']}"))

    return app
