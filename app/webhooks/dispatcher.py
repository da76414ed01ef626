"""The outbox worker: delivers every event, signed, at least once and in order per call.

``app.calls`` writes each event into ``call_events`` in the transaction of the state
change that caused it, then calls :meth:`WebhookDispatcher.notify`. The worker:

* reads the heads of the calls (their earliest pending event: event n+1 of a call is not
  sent before event n was delivered, given up or skipped) that are due,
* sends each with one pooled ``httpx.AsyncClient``, many calls at once (``max_in_flight``,
  and ``max_per_host`` per origin), one event per call at a time,
* records every attempt in ``webhook_deliveries`` and the event's delivery state, each in
  its own short transaction, and schedules retries from the :class:`RetryPolicy`,
* wakes at once on ``notify()`` or when a delivery finishes, at the next due retry, and
  every ``poll_interval`` as a safety net.

Outcomes: 2xx -> ``delivered``; other statuses, timeouts and connection errors -> retried
per the schedule, then ``failed``; 410 Gone -> ``failed``, and every later event for that
URL is failed without an attempt until a redelivery succeeds (the decision is derived from
the attempt log, so it survives restarts); a target refused by the SSRF guard or an
unusable URL -> ``failed`` after one recorded attempt with the reason; no URL at all ->
``skipped``. The call's ``webhook_url`` wins over the configured default.

Only one dispatcher may run on a database (the process that owns the SIP port).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.store.models import DeliveryState, EventType
from app.webhooks import outbox
from app.webhooks.config import EXCERPT_LIMIT, Clock, SystemClock, WebhookConfig
from app.webhooks.http11 import Http11Transport
from app.webhooks.outbox import OutboxItem, envelope_body
from app.webhooks.retry import Verdict, judge
from app.webhooks.signing import WebhookSigner
from app.webhooks.transport import Resolver, build_http_transport, refusal_of, system_resolver
from app.webhooks.urls import (
    InvalidWebhookUrlError,
    check_resolved,
    check_webhook_url,
    webhook_host,
)

logger = logging.getLogger(__name__)

HttpClientFactory = Callable[[], httpx.AsyncClient]
# An error text longer than this is cut (it goes to a column and to logs).
MAX_ERROR_LENGTH = 500
# Outcomes written in one transaction at most (group commit under load).
MAX_WRITE_BATCH = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookEvent:
    """An event as sent (for :data:`OnResponse` hooks)."""

    id: str
    call_id: str
    sequence: int
    type: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookResponse:
    """A receiver's 2xx answer: ``body`` is at most ``response_limit`` bytes."""

    status_code: int
    headers: Mapping[str, str]
    body: bytes


# Called after an event was delivered (2xx) and recorded; the answer flow plugs in here.
# The next event of the same call waits until the hook returns.
OnResponse = Callable[[WebhookEvent, WebhookResponse], Awaitable[None]]


@dataclass(slots=True, kw_only=True)
class DispatcherStats:
    """Counters since start (for logs, metrics and the benchmark)."""

    attempts: int = 0
    delivered: int = 0
    retries_scheduled: int = 0
    failed: int = 0
    skipped: int = 0


# The last event of a call: once it is settled, the fast path forgets the call.
_ENDED = EventType.ENDED.value


@dataclass(slots=True)
class _Tracked:
    """A call on the fast path: its events not yet started, and the last one handed over."""

    queue: deque[OutboxItem] = field(default_factory=deque)
    last: int = 0
    ended: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class _Write:
    delivery: outbox.DeliveryRow | None
    update: outbox.EventUpdate
    done: asyncio.Future[None]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Attempt:
    url: str
    verdict: Verdict
    status_code: int | None = None
    latency_ms: int | None = None
    error: str | None = None
    excerpt: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


def excerpt(body: bytes, limit: int = EXCERPT_LIMIT) -> str | None:
    """At most ``limit`` bytes of UTF-8 text from a response body; None when empty.

    NUL characters are dropped: PostgreSQL text cannot hold them.
    """
    if not body:
        return None
    text = body[:limit].decode("utf-8", "replace").replace("\x00", "")
    # Replacement characters take 3 bytes: cut again, dropping a split last character.
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    message = f"{name}: {text}" if text else name
    return message[:MAX_ERROR_LENGTH]


Transact = Callable[[Callable[[Connection], None]], Awaitable[None]]


async def _transact_in_session(
    sessionmaker: async_sessionmaker[AsyncSession], work: Callable[[Connection], None]
) -> None:
    async with sessionmaker() as session, session.begin():
        connection = await session.connection()
        await connection.run_sync(work)


class _HostLimiter:
    """At most ``limit`` requests at once per origin; entries go away when unused."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._slots: dict[tuple[str, str, int | None], tuple[asyncio.Semaphore, list[int]]] = {}

    @asynccontextmanager
    async def slot(self, url: str) -> AsyncIterator[None]:
        parts = urlsplit(url)
        key = (parts.scheme, (parts.hostname or "").lower(), parts.port)
        entry = self._slots.get(key)
        if entry is None:
            entry = (asyncio.Semaphore(self._limit), [0])
            self._slots[key] = entry
        semaphore, users = entry
        users[0] += 1
        try:
            async with semaphore:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._slots[key]


class WebhookDispatcher:
    """Delivers the outbox. ``start()`` runs the worker; ``run_due()`` is one manual pass.

    ``sessionmaker``: the store's session factory. ``config``: see :class:`WebhookConfig`.
    ``clock``: wall-clock time for due times, signatures and the attempt log (tests pass
    a fake one). ``http_client_factory``: builds the pooled client at start; the default
    one carries the SSRF guard, a replacement must bring its own. ``rng``: jitter draws.
    ``on_response``: see :data:`OnResponse`. ``resolver``: host name lookups of the guard.
    ``transact``: runs the attempt log writes (``app.store.db.Database.transact``: on a
    SQLite file, one dedicated thread); default: a session of ``sessionmaker``.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        config: WebhookConfig,
        *,
        clock: Clock | None = None,
        http_client_factory: HttpClientFactory | None = None,
        rng: random.Random | None = None,
        on_response: OnResponse | None = None,
        resolver: Resolver | None = None,
        transact: Transact | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._transact: Transact = transact or functools.partial(_transact_in_session, sessionmaker)
        self._config = config
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._on_response = on_response
        self._resolver: Resolver = resolver or system_resolver
        self._signer = WebhookSigner(config.keys)
        self._trusted_url = config.default_url if config.trust_default_url else None
        self._trusted_host = webhook_host(self._trusted_url) if self._trusted_url else ""
        self._http_client_factory = http_client_factory
        self._client: httpx.AsyncClient | None = None
        # The default: our transport, called directly. httpx's client layer costs ~120 us
        # per request and its Response <-> stream reference cycle left ~24 objects of
        # cyclic garbage per webhook (the bulk of the garbage collector's work).
        self._transport: Http11Transport | None = None
        self._timeouts = {key: config.timeout for key in ("connect", "read", "write", "pool")}
        self._hosts = _HostLimiter(config.max_per_host)
        self._gone: set[str] = set()
        self._opened = False

        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._drained = asyncio.Event()
        self._draining = False
        self._worker: asyncio.Task[None] | None = None
        self._inflight: dict[str, asyncio.Task[None]] = {}
        # Finished attempts wait here for the writer, which records all that are waiting
        # in one short transaction (group commit: one commit per batch, not per attempt).
        self._write_queue: list[_Write] = []
        self._writer: asyncio.Task[None] | None = None
        # Calls whose last attempt could not be recorded: held back a while (loop time).
        self._cooldown: dict[str, float] = {}
        # The fast path: calls whose every event this process committed (their first one
        # arrived through notify()), with their events not yet started, in order. Their
        # events are sent from memory, never looked up; a retry hands the call back to the
        # database path for good (the retry's due time lives in the database).
        self._tracked: dict[str, _Tracked] = {}
        # Tracked calls with an event ready to start, waiting for a free slot (FIFO).
        self._ready: deque[str] = deque()
        self._queued = 0  # events in the tracked calls' queues
        # Something may be due in the database that the fast path does not cover.
        self._db_dirty = True
        # The earliest due time the worker knows of (from its last look at the outbox and
        # the retries it scheduled since); it may be stale-early, never stale-late.
        self._known_due: datetime | None = None
        self.stats = DispatcherStats()

    # -- public API ------------------------------------------------------------------------

    @property
    def config(self) -> WebhookConfig:
        return self._config

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    @property
    def backlog(self) -> int:
        """Events known in memory and not yet delivered, deliveries under way and
        outcomes waiting to be recorded (a load signal)."""
        return self._queued + len(self._inflight) + len(self._write_queue)

    def notify(self, events: Sequence[OutboxItem] = ()) -> None:
        """New events were committed: send them (cheap; call right after the commit).

        ``events``: the pending events of that commit, in order. While the worker runs,
        a call whose first event is among them is delivered from memory from then on (no
        outbox query per event); anything else wakes the worker to look at the outbox.
        """
        if not self.running or self._draining:
            self._db_dirty = True
            self._wake.set()
            return
        for item in events:
            tracked = self._tracked.get(item.call_id)
            if tracked is None:
                if item.sequence != 1 or item.call_id in self._inflight:
                    self._db_dirty = True  # not all of this call's events are known here
                    self._wake.set()
                    continue
                tracked = self._tracked[item.call_id] = _Tracked()
            if item.sequence <= tracked.last:
                continue  # already handed over (the database path raced the commit)
            tracked.last = item.sequence
            tracked.queue.append(item)
            self._queued += 1
            if len(tracked.queue) == 1 and item.call_id not in self._inflight:
                self._ready.append(item.call_id)
        if not events:
            self._db_dirty = True
            self._wake.set()
        self._start_ready()

    def _start_ready(self) -> None:
        """Start the ready tracked calls' next events while slots are free."""
        ready = self._ready
        while ready and len(self._inflight) < self._config.max_in_flight:
            call_id = ready.popleft()
            tracked = self._tracked.get(call_id)
            if tracked is None or not tracked.queue or call_id in self._inflight:
                continue
            self._queued -= 1
            self._launch(tracked.queue.popleft())
        if ready or self._inflight:
            self._idle.clear()

    def _launch(self, item: OutboxItem) -> None:
        task = asyncio.create_task(self._process(item), name=f"webhook-{item.event_id}")
        self._inflight[item.call_id] = task
        task.add_done_callback(functools.partial(self._finished, item.call_id))
        self._idle.clear()

    async def start(self) -> None:
        """Open the HTTP client, load the 410 decisions and start the worker task."""
        if self._worker is not None:
            raise RuntimeError("the dispatcher is already started")
        await self._open()
        self._draining = False
        self._drained.clear()
        self._worker = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self, flush_timeout: float = 0.0) -> None:
        """Flush what is deliverable now within ``flush_timeout`` seconds, then stop.

        "Deliverable" is every call head due now and the events behind each one as they
        become heads; retries scheduled later are left for the next start (they are in
        the database). Attempts still running at the deadline are cancelled and not
        recorded, so those events stay pending and are sent again after a restart.
        """
        if self._worker is not None and not self._worker.done() and flush_timeout > 0:
            self._draining = True
            self._wake.set()
            with suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    await self._drained.wait()
        if self._worker is not None:
            self._worker.cancel()
            with suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # What the fast path held in memory is pending in the outbox: the next start
        # finds it there.
        self._tracked.clear()
        self._queued = 0
        self._ready.clear()
        self._db_dirty = True
        if self._writer is not None:
            # Attempts that had finished when they were cancelled: let their records land.
            await asyncio.gather(self._writer, return_exceptions=True)
        await self._close()

    async def wait_idle(self) -> None:
        """Return once the worker waits with nothing in flight (for tests and drains)."""
        await self._idle.wait()

    async def redeliver(self, event_id: str) -> bool:
        """Queue one event again (pending, due now, attempts kept); False if unknown.

        An explicit redelivery also lifts a 410 decision for the event's URL: the user
        says the endpoint is back. For ``POST /v1/events/{id}/redeliver``.
        """
        async with self._sessionmaker() as session, session.begin():
            found = await outbox.requeue(session, event_id=event_id, now=self._clock.now())
        if found is None:
            return False
        url = found.call_webhook_url or self._config.default_url
        if url is not None:
            self._gone.discard(url)
        self._cooldown.pop(found.call_id, None)
        self.notify()
        return True

    async def run_due(self) -> int:
        """Handle every call head due at the clock's current time; return how many.

        Loops until nothing is due at that moment, so the events queued behind a head that
        was delivered or given up go too; a retry lands at a later time and waits for the
        next call (tests step a fake clock between calls). Not for use while the worker
        runs.
        """
        await self._open()
        now = self._clock.now()
        handled = 0
        while True:
            async with self._sessionmaker() as session:
                items = await outbox.due_heads(
                    session,
                    now=now,
                    limit=self._config.max_in_flight,
                    exclude_calls=self._held_calls(),
                )
            if not items:
                return handled
            async with asyncio.TaskGroup() as group:
                for item in items:
                    group.create_task(self._process(item))
            handled += len(items)

    async def next_due(self) -> datetime | None:
        """When the earliest call head is due (None: nothing pending)."""
        async with self._sessionmaker() as session:
            return await outbox.next_due(session, exclude_calls=self._held_calls())

    # -- lifecycle -------------------------------------------------------------------------

    def _default_transport(self) -> Http11Transport:
        return build_http_transport(
            max_connections=self._config.max_in_flight,
            allow_private=self._config.allow_private,
            trusted_hosts=(self._trusted_host,) if self._trusted_host else (),
            resolver=self._resolver,
        )

    async def _open(self) -> None:
        if self._opened:
            return
        async with self._sessionmaker() as session:
            self._gone = await outbox.gone_urls(session)
        if self._gone:
            logger.warning(
                "webhook URLs answered 410 Gone; their events are failed without attempts",
                extra={"urls": sorted(self._gone)},
            )
        if self._http_client_factory is not None:
            self._client = self._http_client_factory()
        else:
            self._transport = self._default_transport()
        self._opened = True

    async def _close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._transport is not None:
            await self._transport.aclose()
            self._transport = None
        self._opened = False

    # -- the worker ------------------------------------------------------------------------

    def _held_calls(self) -> Collection[str]:
        if self._cooldown:
            now = asyncio.get_running_loop().time()
            for call_id in [c for c, until in self._cooldown.items() if until <= now]:
                del self._cooldown[call_id]
        if not self._cooldown and not self._ready:
            return self._inflight.keys()
        return self._inflight.keys() | self._cooldown.keys() | set(self._ready)

    async def _run(self) -> None:
        poll = self._config.poll_interval
        while True:
            self._wake.clear()
            if self._db_dirty or self._draining:
                # The outbox may hold something the fast path does not cover: look.
                self._idle.clear()
                self._db_dirty = False
                try:
                    wait = await self._round()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("webhook dispatcher round failed; retrying after the poll")
                    wait = poll
            else:
                wait = self._delay_until(self._known_due, self._clock.now())
            self._set_idle()
            if wait > 0 and self._wake.is_set():
                continue
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                except TimeoutError:
                    self._db_dirty = True  # a retry is due, or the safety-net poll
            else:
                self._db_dirty = True

    def _set_idle(self) -> None:
        if not self._inflight and not self._ready and not self._db_dirty:
            self._idle.set()

    async def _round(self) -> float:
        """Start what is due; return how long to wait before the next round."""
        now = self._clock.now()
        free = self._config.max_in_flight - len(self._inflight)
        items: list[OutboxItem] = []
        if free > 0:
            async with self._sessionmaker() as session:
                items = await outbox.due_heads(
                    session, now=now, limit=free, exclude_calls=self._held_calls()
                )
            for item in items:
                if item.call_id in self._inflight or item.call_id in self._tracked:
                    # Started from memory while the query ran, or a tracked call's event
                    # found in the moment between its commit and notify(): the fast path
                    # sends it.
                    continue
                self._launch(item)
        if free <= 0:
            return self._config.poll_interval  # full: each finishing delivery wakes us
        if items:
            # Busy: every finishing delivery wakes the worker, and the earliest retry
            # known so far bounds the wait; the database is asked when a round is idle.
            # (A stale-early value costs one more round, which then asks the database.)
            return self._delay_until(self._known_due, now)
        # Snapshot: deliveries may finish (and their calls' next events become heads)
        # while the query runs; only an empty snapshot proves that nothing is left.
        held = set(self._held_calls())
        busy = set(self._inflight)
        async with self._sessionmaker() as session:
            due = await outbox.next_due(session, exclude_calls=held)
        self._known_due = due
        if (
            self._draining
            and not busy
            and not self._inflight
            and not self._ready
            and (due is None or due > now)
        ):
            self._drained.set()
        return self._delay_until(due, now)

    def _delay_until(self, due: datetime | None, now: datetime) -> float:
        poll = self._config.poll_interval
        return poll if due is None else min(max((due - now).total_seconds(), 0.0), poll)

    def _finished(self, call_id: str, task: asyncio.Task[None]) -> None:
        if self._inflight.get(call_id) is task:
            del self._inflight[call_id]
        failed = not task.cancelled() and task.exception() is not None
        if failed:
            logger.error(
                "webhook delivery could not be recorded; holding the call back",
                exc_info=task.exception(),
                extra={"call_id": call_id},
            )
            self._cooldown[call_id] = asyncio.get_running_loop().time() + self._config.poll_interval
        tracked = self._tracked.get(call_id)
        if tracked is not None and (failed or task.cancelled()):
            self._untrack(call_id)
            tracked = None
        if tracked is None:
            # A database-path call: its next event may be a head now.
            self._db_dirty = True
            self._wake.set()
        elif tracked.queue:
            self._ready.append(call_id)
        elif tracked.ended:
            del self._tracked[call_id]  # its last event is settled
        self._start_ready()
        if self._draining and not self._inflight and not self._ready:
            self._wake.set()  # the worker decides whether the drain is done
        self._set_idle()

    def _untrack(self, call_id: str) -> None:
        """The database path takes the call over (its events are all in the outbox)."""
        tracked = self._tracked.pop(call_id, None)
        if tracked is not None:
            self._queued -= len(tracked.queue)
            self._db_dirty = True
            self._wake.set()

    # -- one event -------------------------------------------------------------------------

    def _url_for(self, item: OutboxItem) -> str | None:
        return item.call_webhook_url or self._config.default_url

    async def _process(self, item: OutboxItem) -> None:
        url = self._url_for(item)
        if url is None:
            await self._decide(item, DeliveryState.SKIPPED)
            self.stats.skipped += 1
            return
        if url in self._gone:
            logger.info(
                "webhook not sent: its URL answered 410 Gone before",
                extra={"event_id": item.event_id, "url": url},
            )
            await self._decide(item, DeliveryState.FAILED)
            self.stats.failed += 1
            return
        attempt = await self._attempt(item, url)
        await self._record(item, attempt)

    async def _call_hook(self, item: OutboxItem, attempt: _Attempt) -> None:
        assert self._on_response is not None and attempt.status_code is not None
        event = WebhookEvent(
            id=item.event_id,
            call_id=item.call_id,
            sequence=item.sequence,
            type=item.type,
            data=item.envelope["data"],
        )
        response = WebhookResponse(
            status_code=attempt.status_code, headers=attempt.headers, body=attempt.body
        )
        try:
            await self._on_response(event, response)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("webhook on_response hook failed", extra={"event_id": item.event_id})

    async def _decide(self, item: OutboxItem, state: DeliveryState) -> None:
        """Settle an event without an HTTP attempt (skipped, or its URL is gone)."""
        await self._write(
            None,
            outbox.EventUpdate(
                id=item.event_id,
                attempts=item.attempts,
                delivery_state=state.value,
                next_attempt_at=None,
                delivered_at=None,
            ),
        )

    async def _write(self, delivery: outbox.DeliveryRow | None, update: outbox.EventUpdate) -> None:
        """Queue one outcome for the writer and wait until it is committed.

        If the waiting task is cancelled (stop), the write still happens: the attempt
        did take place.
        """
        await self._queue_write(delivery, update)

    def _queue_write(
        self, delivery: outbox.DeliveryRow | None, update: outbox.EventUpdate
    ) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._write_queue.append(_Write(delivery=delivery, update=update, done=done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_batches(), name="webhook-writer")
        return done

    async def _write_batches(self) -> None:
        while self._write_queue:
            batch = self._write_queue[:MAX_WRITE_BATCH]
            del self._write_queue[:MAX_WRITE_BATCH]
            work = functools.partial(
                outbox.write_outcomes_sync,
                deliveries=[w.delivery for w in batch if w.delivery is not None],
                updates=[w.update for w in batch],
            )
            try:
                await self._transact(work)
            except Exception as exc:
                for write in batch:
                    if not write.done.done():
                        write.done.set_exception(exc)
            else:
                for write in batch:
                    if not write.done.done():
                        write.done.set_result(None)

    @staticmethod
    def _body(item: OutboxItem) -> bytes:
        return envelope_body(item)

    async def _check_target(self, url: str) -> None:
        """URL checks before sending; raise InvalidWebhookUrlError to refuse."""
        trusted = self._trusted_url is not None and url == self._trusted_url
        check_webhook_url(url, allow_private=self._config.allow_private or trusted)
        if self._config.allow_private or trusted:
            return
        host = webhook_host(url)
        if host and host == self._trusted_host:
            # The connection guard lets the trusted host through; another URL on that
            # host gets the resolved-address check here instead.
            port = urlsplit(url).port or (443 if url.lower().startswith("https") else 80)
            check_resolved(host, await self._resolver(host, port))

    async def _attempt(self, item: OutboxItem, url: str) -> _Attempt:
        body = self._body(item)
        headers = {"content-type": "application/json"}
        timestamp = int(self._clock.now().timestamp())
        headers |= self._signer.headers(msg_id=item.event_id, timestamp=timestamp, body=body)
        self.stats.attempts += 1
        try:
            await self._check_target(url)
        except InvalidWebhookUrlError as exc:
            return _Attempt(url=url, verdict=Verdict.REFUSED, error=f"refused: {exc}")
        except httpx.HTTPError as exc:  # resolving the trusted host's sibling failed
            return _Attempt(url=url, verdict=Verdict.RETRY, error=_describe(exc))
        async with self._hosts.slot(url):
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self._config.timeout):
                    return await self._post(url, body, headers, started)
            except TimeoutError:
                error = f"timeout after {self._config.timeout:g}s"
            except httpx.TimeoutException as exc:
                error = f"timeout: {_describe(exc)}"
            except httpx.HTTPError as exc:
                refusal = refusal_of(exc)
                if refusal is not None:
                    return _Attempt(url=url, verdict=Verdict.REFUSED, error=f"refused: {refusal}")
                error = _describe(exc)
            except OSError as exc:
                error = _describe(exc)
            latency = round((time.perf_counter() - started) * 1000)
            return _Attempt(url=url, verdict=Verdict.RETRY, latency_ms=latency, error=error)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], started: float
    ) -> _Attempt:
        limit = self._config.response_limit
        if self._transport is not None:
            headers["user-agent"] = self._config.user_agent
            raw = await self._transport.post(
                url, body, headers, timeouts=self._timeouts, limit=limit
            )
            return _Attempt(
                url=url,
                verdict=judge(raw.status_code),
                status_code=raw.status_code,
                latency_ms=round((time.perf_counter() - started) * 1000),
                excerpt=excerpt(raw.body),
                headers=raw.headers,
                body=raw.body,
            )
        assert self._client is not None
        received = bytearray()
        async with self._client.stream("POST", url, content=body, headers=headers) as response:
            async for chunk in response.aiter_bytes():
                received += chunk
                if len(received) >= limit:
                    break
        latency = round((time.perf_counter() - started) * 1000)
        content = bytes(received[:limit])
        return _Attempt(
            url=url,
            verdict=judge(response.status_code),
            status_code=response.status_code,
            latency_ms=latency,
            excerpt=excerpt(content),
            headers=dict(response.headers),
            body=content,
        )

    async def _record(self, item: OutboxItem, attempt: _Attempt) -> None:
        """Log the attempt and move the event on, in one transaction."""
        now = self._clock.now()
        attempts = item.attempts + 1
        next_attempt_at: datetime | None = None
        delivered_at: datetime | None = None
        if attempt.verdict is Verdict.DELIVERED:
            state = DeliveryState.DELIVERED
            delivered_at = now
        elif attempt.verdict is Verdict.RETRY:
            next_attempt_at = self._config.retry.next_attempt_at(
                attempts_made=attempts, now=now, created_at=item.created_at, rng=self._rng
            )
            state = DeliveryState.PENDING if next_attempt_at else DeliveryState.FAILED
        else:
            state = DeliveryState.FAILED
        recorded = self._queue_write(
            outbox.DeliveryRow(
                event_id=item.event_id,
                attempt=attempts,
                url=attempt.url,
                status_code=attempt.status_code,
                latency_ms=attempt.latency_ms,
                error=attempt.error,
                response_excerpt=attempt.excerpt,
                attempted_at=now,
            ),
            outbox.EventUpdate(
                id=item.event_id,
                attempts=attempts,
                delivery_state=state.value,
                next_attempt_at=next_attempt_at,
                delivered_at=delivered_at,
            ),
        )
        if attempt.verdict is Verdict.DELIVERED and self._on_response is not None:
            # The hook (the answer flow: a 200 to the INVITE) runs while the attempt is
            # being recorded, not after: the receiver's answer is what the caller waits
            # for. The call's next event still waits for both.
            await self._call_hook(item, attempt)
        await recorded
        if attempt.verdict is Verdict.GONE:
            self._gone.add(attempt.url)
            logger.warning(
                "webhook URL answered 410 Gone: no more events are sent to it",
                extra={"url": attempt.url, "event_id": item.event_id},
            )
        tracked = self._tracked.get(item.call_id)
        if tracked is not None and item.type == _ENDED:
            tracked.ended = True
        if state is DeliveryState.PENDING:
            self._untrack(item.call_id)
        if state is DeliveryState.DELIVERED:
            self.stats.delivered += 1
        elif state is DeliveryState.PENDING:
            self.stats.retries_scheduled += 1
            if next_attempt_at is not None and (
                self._known_due is None or next_attempt_at < self._known_due
            ):
                self._known_due = next_attempt_at
        else:
            self.stats.failed += 1
            logger.warning(
                "webhook given up",
                extra={
                    "event_id": item.event_id,
                    "call_id": item.call_id,
                    "attempts": attempts,
                    "error": attempt.error,
                    "status_code": attempt.status_code,
                },
            )
