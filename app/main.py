"""Composition root: ``create_app(settings)`` and the lifespan that starts and stops the parts.

Nothing is built at import time. The lifespan opens the database, starts the webhook
dispatcher, the call service, and (unless ``sip=False``) the SIP server with the recovery
agent in front of its user agent and the RTP media factory, each registering its readiness
check, and the admission control that sheds new calls under overload
(:mod:`app.calls.admission`). Then the calls a previous process left unfinished are ended
from their persisted dialog state (:mod:`app.calls.recovery`), before HTTP serves.
``app.state.shutdown`` lets ``callctl serve`` start the graceful drain on SIGTERM
(:mod:`app.calls.shutdown`). Everything started is stopped in reverse order by one
AsyncExitStack, also when start-up fails half-way: the user agent ends every live call
(cause ``shutdown``), the call service writes those ends, the SIP sockets close, the
dispatcher flushes what it can, the database closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.api import actions, calls, health
from app.api.fast_dial import DialFastPath
from app.api.metrics import AdmissionCollector, HttpMetrics, MetricsMiddleware
from app.api.openapi import API_VERSION, DESCRIPTION, SUMMARY, TITLE, install_openapi
from app.api.problems import install_problem_handlers
from app.api.readiness import ReadinessChecks
from app.api.webhook_docs import register_webhook_docs
from app.calls.admission import AdmissionControl, LoopLagMonitor, OverloadLimits
from app.calls.answer_flow import AnswerFlow
from app.calls.service import CallService
from app.calls.shutdown import GracefulShutdown
from app.media import PortPool, RtpSdhFactory
from app.settings import Settings
from app.sip.aio import SipServer, SipServerConfig
from app.sip.endpoint import EndpointConfig
from app.sip.timers import TimerConfig
from app.sip.trace import SipTrace
from app.store.db import Database
from app.ua.core import ServerCore
from app.ua.recovery import RecoveryAgent
from app.ua.user_agent import UserAgent, UserAgentConfig
from app.webhooks import WebhookConfig, WebhookDispatcher

logger = logging.getLogger(__name__)

USER_AGENT = "callctl/0.1"


def _timers(settings: Settings) -> TimerConfig:
    return TimerConfig(t1=settings.t1_ms / 1000, t2=settings.t2_ms / 1000, t4=settings.t4_ms / 1000)


async def _start_sip(
    app: FastAPI, settings: Settings, service: CallService, stack: AsyncExitStack
) -> None:
    """SIP server, user agent and media factory; the service becomes the UA's delegate."""
    readiness: ReadinessChecks = app.state.readiness
    overrides: dict[str, object] = {}
    if app.state.sip_port is not None:
        overrides["port"] = app.state.sip_port
    server_config = SipServerConfig.from_settings(settings, **overrides)
    timers = _timers(settings)
    ua_allow = ("INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "INFO", "PRACK", "UPDATE")
    endpoint_config = EndpointConfig(
        timers=timers,
        allowed_methods=ua_allow,
        supported=("100rel",),
        user_agent=USER_AGENT,
    )
    core = ServerCore()
    # CALLCTL_SIP_TRACE: every message in and out, logged whole and kept per Call-ID in
    # bounded ring buffers (off by default: it costs CPU and memory on every message).
    trace = SipTrace(log_messages=True) if settings.sip_trace else None
    app.state.sip_trace = trace
    server = SipServer(server_config, core, endpoint_config=endpoint_config, trace=trace)
    core.bind(server)
    await server.start()
    stack.push_async_callback(server.stop)
    app.state.sip_server = server
    stack.callback(setattr, app.state, "sip_server", None)

    # Via/Contact carry the advertised address the server chose (public address, or the
    # bound one); SDP c= lines carry the same host, RTP binds where SIP binds.
    advertised_host = server.endpoint.config.local_host
    advertised_port = server.endpoint.config.local_port
    pool = PortPool(settings.rtp_ports.low, settings.rtp_ports.high)
    sdh_factory = RtpSdhFactory(advertised_host, settings.sip_host, pool)
    ua = UserAgent(
        core,
        UserAgentConfig(
            contact_host=advertised_host,
            contact_port=advertised_port,
            transport="udp" if "udp" in server_config.transports else "tcp",
            t1=timers.t1,
            t2=timers.t2,
            t4=timers.t4,
            auto_provisional=settings.auto_provisional,
            inbound_timeout=settings.inbound_timeout,
            outbound_proxy=settings.outbound_proxy,
            user_agent=USER_AGENT,
            allow=ua_allow,
            inbound_allow=tuple(settings.inbound_allow),
            inbound_auth=tuple(
                (c.username, c.password.get_secret_value()) for c in settings.inbound_auth
            ),
        ),
        sdh_factory,
        service,
    )
    # The recovery agent is the TU in front of the UA: it ends the calls of a dead process
    # (and handles their late answers) and refuses new INVITEs while draining.
    agent = RecoveryAgent(core, t1=timers.t1, t2=timers.t2, outbound_proxy=settings.outbound_proxy)
    core.attach(agent)
    agent.attach(ua)
    service.bind(ua)
    app.state.user_agent = ua
    app.state.recovery_agent = agent
    stack.callback(setattr, app.state, "user_agent", None)
    stack.callback(setattr, app.state, "recovery_agent", None)

    async def stop_calls() -> None:
        # Before the sockets close: BYE/CANCEL/503 every live call, write their ends.
        # (After a SIGTERM drain there is nothing left to do here.)
        agent.refuse_new_invites(1)
        service.unbind()
        await ua.close()
        await service.drain(within=settings.drain_seconds)

    stack.push_async_callback(stop_calls)

    async def sip_bound() -> None:
        if not server.running:
            raise RuntimeError("SIP transports are not bound")

    readiness.add("sip", sip_bound)
    stack.callback(readiness.remove, "sip")
    host, port = server.local_addr
    logger.info(
        "SIP user agent ready on %s:%d (%s)", host, port, ",".join(server_config.transports)
    )


def _start_admission(
    app: FastAPI,
    settings: Settings,
    service: CallService,
    dispatcher: WebhookDispatcher,
    stack: AsyncExitStack,
) -> None:
    """Admission control: new calls get 503 over ``CALLCTL_MAX_CALLS`` or while overloaded
    (the recovery agent answers INVITEs, the service refuses dials); the loop-lag monitor
    feeds it; its figures go to /metrics."""
    admission = AdmissionControl(
        OverloadLimits.from_settings(settings),
        active_calls=lambda: service.active_calls,
        write_backlog=lambda: service.write_backlog,
        webhook_backlog=lambda: dispatcher.backlog,
        dials=lambda: service.dials_in_progress,
    )
    service.set_admission(admission)
    stack.callback(service.set_admission, None)
    agent: RecoveryAgent | None = app.state.recovery_agent
    if agent is not None:
        agent.admit_with(admission)
    monitor = LoopLagMonitor(admission.observe)
    monitor.start()
    stack.push_async_callback(monitor.stop)
    registry: CollectorRegistry = app.state.metrics_registry
    collector = AdmissionCollector(admission)
    registry.register(collector)
    stack.callback(registry.unregister, collector)
    app.state.admission = admission
    stack.callback(setattr, app.state, "admission", None)


class ShutdownControl:
    """Lets a signal handler start the graceful drain inside the running app.

    ``callctl serve`` calls :meth:`request` from its SIGTERM handler; the drain
    (:class:`~app.calls.shutdown.GracefulShutdown`) runs as a task on the app's loop and
    ``on_done`` is called when it is over (the server then stops, and the lifespan's exit
    stops the parts). Without a running app, :meth:`request` returns False.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run: Callable[[], Awaitable[None]] | None = None
        self._task: asyncio.Task[None] | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, run: Callable[[], Awaitable[None]]) -> None:
        self._loop, self._run = loop, run

    def disarm(self) -> None:
        self._loop = self._run = None

    @property
    def requested(self) -> bool:
        return self._task is not None

    def request(self, on_done: Callable[[], None]) -> bool:
        """Start the drain (safe from a signal handler); False when nothing is running."""
        loop, run = self._loop, self._run
        if loop is None or run is None or loop.is_closed():
            return False
        loop.call_soon_threadsafe(self._start, run, on_done)
        return True

    def _start(self, run: Callable[[], Awaitable[None]], on_done: Callable[[], None]) -> None:
        if self._task is not None:
            return

        async def drain() -> None:
            try:
                await run()
            except Exception:
                logger.exception("graceful drain failed; stopping anyway")
            finally:
                on_done()

        self._task = asyncio.get_running_loop().create_task(drain(), name="graceful-drain")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    readiness: ReadinessChecks = app.state.readiness
    async with AsyncExitStack() as stack:
        # 1. Database (migrations already ran: `callctl serve` applies them first).
        database = Database.from_url(settings.database_url)
        stack.push_async_callback(database.dispose)
        app.state.database = database
        stack.callback(setattr, app.state, "database", None)
        readiness.add("database", database.ping)
        stack.callback(readiness.remove, "database")

        # 2. Call service and webhook dispatcher. The service writes the outbox and wakes
        #    the dispatcher; the dispatcher hands 2xx answers to call.initiated back to the
        #    service (the webhook-driven answer flow). The service then ends the calls a
        #    previous process left behind, before SIP takes new ones.
        service = CallService(database=database, default_webhook_url=settings.webhook_url)
        dispatcher = WebhookDispatcher(
            database.sessionmaker,
            WebhookConfig.from_settings(settings),
            on_response=AnswerFlow(service),
            transact=database.transact,
        )
        await dispatcher.start()
        stack.push_async_callback(dispatcher.stop, settings.drain_seconds)
        app.state.webhook_dispatcher = dispatcher
        stack.callback(setattr, app.state, "webhook_dispatcher", None)

        # 3. The service takes actions once its dispatcher runs; stops before it.
        service.set_notifier(dispatcher)
        stack.push_async_callback(service.close)
        app.state.call_service = service
        stack.callback(setattr, app.state, "call_service", None)

        # 4. SIP server, user agent, media (the service is the UA's delegate), and the
        #    admission control in front of new calls. Then the calls a previous process
        #    left behind are ended from their persisted dialog state (BYE / CANCEL / 480
        #    on the wire, call.ended in the outbox), before HTTP serves (the lifespan has
        #    not yielded yet).
        if app.state.sip_enabled:
            await _start_sip(app, settings, service, stack)
        _start_admission(app, settings, service, dispatcher, stack)
        await service.recover(app.state.recovery_agent)

        # 5. SIGTERM (via `callctl serve`): drain before the HTTP server stops.
        shutdown = GracefulShutdown(
            service=service,
            drain_seconds=settings.drain_seconds,
            gate=app.state.recovery_agent,
            user_agent=app.state.user_agent,
        )

        async def refusing() -> None:
            raise RuntimeError("draining: not taking new calls")

        async def drain() -> None:
            readiness.add("accepting", refusing)  # /readyz fails: load balancers move on
            await shutdown.run()

        control: ShutdownControl = app.state.shutdown
        control.arm(asyncio.get_running_loop(), drain)
        stack.callback(control.disarm)
        stack.callback(readiness.remove, "accepting")

        logger.info("callctl ready", extra={"http_port": settings.http_port})
        yield
        logger.info("callctl stopping")


def create_app(settings: Settings, *, sip: bool = True, sip_port: int | None = None) -> FastAPI:
    """A fresh application for these settings; its own metrics registry and state.

    ``sip=False`` runs without the SIP server (REST reads work, dialing answers 503);
    ``sip_port`` overrides ``CALLCTL_SIP_PORT`` (0: a free port, for tests).
    """
    app = FastAPI(
        title=TITLE,
        summary=SUMMARY,
        description=DESCRIPTION,
        version=API_VERSION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.api_keys = settings.api_key_values
    app.state.database = None
    app.state.call_service = None
    app.state.webhook_dispatcher = None
    app.state.sip_server = None
    app.state.user_agent = None
    app.state.recovery_agent = None
    app.state.shutdown = ShutdownControl()
    app.state.sip_enabled = sip
    app.state.sip_port = sip_port
    app.state.readiness = ReadinessChecks()
    registry = CollectorRegistry()
    app.state.metrics_registry = registry

    install_problem_handlers(app)
    # Inside the metrics middleware, so that dials answered by the fast path are counted.
    app.add_middleware(DialFastPath, state=app.state)
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics.register(registry))
    app.include_router(health.router)
    app.include_router(calls.router)
    app.include_router(actions.router)
    register_webhook_docs(app.webhooks)
    install_openapi(app)
    return app
