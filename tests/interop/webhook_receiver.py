"""A real webhook receiver on 127.0.0.1 for the interop tests: records, verifies, answers.

Built on the HTTP server of the webhook tests (:mod:`tests.webhooks.receiver`): this module
adds what a test of the whole service needs on top of it:

* every delivery is kept with its headers and parsed JSON envelope, and (when the test gave
  the service's ``CALLCTL_WEBHOOK_SECRET``) whether its Standard Webhooks signature checks;
* the answer is programmable per event type: a JSON body (an action or a list of actions
  for the webhook-driven answer flow of API.md, e.g. ``{"action": "accept"}`` for
  ``call.initiated``), a status code, or a function of the delivery;
* :meth:`WebhookReceiver.wait_for` waits, bounded, until a predicate over the deliveries
  holds (woken by each delivery: no polling, no sleeps).

Delivery is at least once, so :meth:`events` drops repeated event ids (a retry of an event
whose 2xx got lost) and keeps the first copy; :attr:`deliveries` keeps them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from standardwebhooks import Webhook, WebhookVerificationError

from tests.webhooks.receiver import Received, Receiver, Reply

#: Default bound of one wait (a failure bound for liveness, never a timing assertion).
WAIT_TIMEOUT = 15.0

JsonBody = dict[str, Any] | list[Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What the receiver answers to a delivery: a status and an optional body."""

    status: int = 200
    json_body: JsonBody | None = None
    raw_body: bytes | None = None  # sent as is (e.g. to test a non-JSON answer)

    def reply(self) -> Reply:
        if self.raw_body is not None:
            return Reply(status=self.status, body=self.raw_body, content_type="text/plain")
        if self.json_body is None:
            return Reply(status=self.status)
        return Reply(
            status=self.status,
            body=json.dumps(self.json_body).encode(),
            content_type="application/json",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One POST the service made: headers (lower-case names), body, parsed envelope."""

    index: int
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    envelope: dict[str, Any] | None  # the parsed JSON, None when the body is not JSON
    signature_ok: bool | None  # None: no secret given to the receiver
    answer: Answer

    @property
    def event_id(self) -> str:
        return str(self._field("id"))

    @property
    def type(self) -> str:
        return str(self._field("type"))

    @property
    def call_id(self) -> str:
        return str(self._field("call_id"))

    @property
    def sequence(self) -> int:
        return int(self._field("sequence"))

    @property
    def data(self) -> dict[str, Any]:
        data = self._field("data")
        assert isinstance(data, dict), data
        return data

    @property
    def call(self) -> dict[str, Any]:
        """The call object as it was when the event was written (``data.call``)."""
        call = self.data.get("call")
        assert isinstance(call, dict), self.data
        return call

    def _field(self, name: str) -> Any:
        assert self.envelope is not None, f"delivery {self.index} is not JSON: {self.body!r}"
        assert name in self.envelope, f"delivery {self.index} has no {name!r}: {self.envelope}"
        return self.envelope[name]


Responder = Callable[[Delivery], Answer | None]


class WebhookReceiver:
    """Start with :meth:`start`, give :meth:`url` to the service, stop with :meth:`stop`."""

    def __init__(self, *, secret: str | None = None) -> None:
        self._server = Receiver()
        self._server.plan = self._plan
        self._verifier = Webhook(secret) if secret is not None else None
        self._answers: dict[str, Answer] = {}
        self._responders: list[Responder] = []
        self.deliveries: list[Delivery] = []

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()

    def url(self, path: str = "/hooks/callctl") -> str:
        return self._server.url(path)

    # -- programming the answers -----------------------------------------------------------

    def answer(
        self,
        event_type: str,
        body: JsonBody | None = None,
        *,
        status: int = 200,
        raw: bytes | None = None,
    ) -> None:
        """Answer every delivery of ``event_type`` with this status and JSON (or raw) body."""
        self._answers[event_type] = Answer(status=status, json_body=body, raw_body=raw)

    def respond_with(self, responder: Responder) -> None:
        """A function that picks the answer (None: fall back to the per-type answers)."""
        self._responders.append(responder)

    def _answer_for(self, delivery: Delivery) -> Answer:
        for responder in self._responders:
            chosen = responder(delivery)
            if chosen is not None:
                return chosen
        if delivery.envelope is not None:
            kind = delivery.envelope.get("type")
            if isinstance(kind, str) and kind in self._answers:
                return self._answers[kind]
        return Answer()

    def _plan(self, request: Received) -> Reply:
        envelope: dict[str, Any] | None
        try:
            parsed = json.loads(request.body)
            envelope = parsed if isinstance(parsed, dict) else None
        except ValueError:
            envelope = None
        signature_ok: bool | None = None
        if self._verifier is not None:
            try:
                self._verifier.verify(request.body, dict(request.headers))
                signature_ok = True
            except WebhookVerificationError:
                signature_ok = False
        draft = Delivery(
            index=len(self.deliveries),
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=request.body,
            envelope=envelope,
            signature_ok=signature_ok,
            answer=Answer(),
        )
        answer = self._answer_for(draft)
        delivery = Delivery(
            index=draft.index,
            method=draft.method,
            path=draft.path,
            headers=draft.headers,
            body=draft.body,
            envelope=draft.envelope,
            signature_ok=draft.signature_ok,
            answer=answer,
        )
        # Recorded before the HTTP answer goes out: the server wakes waiters right after.
        self.deliveries.append(delivery)
        return answer.reply()

    # -- reading -----------------------------------------------------------------------------

    def events(self, call_id: str | None = None) -> list[Delivery]:
        """The events received (first copy of each event id), optionally of one call."""
        seen: set[str] = set()
        out: list[Delivery] = []
        for delivery in self.deliveries:
            if delivery.envelope is None or delivery.event_id in seen:
                continue
            seen.add(delivery.event_id)
            if call_id is None or delivery.call_id == call_id:
                out.append(delivery)
        return out

    def types(self, call_id: str) -> list[str]:
        return [event.type for event in self.events(call_id)]

    def call_ids(self) -> list[str]:
        """Every call id seen, in the order of its first event."""
        out: list[str] = []
        for event in self.events():
            if event.call_id not in out:
                out.append(event.call_id)
        return out

    def find(self, event_type: str, call_id: str | None = None) -> list[Delivery]:
        return [e for e in self.events(call_id) if e.type == event_type]

    # -- waiting ---------------------------------------------------------------------------

    async def wait_for(
        self,
        predicate: Callable[[list[Delivery]], bool],
        timeout: float = WAIT_TIMEOUT,  # noqa: ASYNC109
    ) -> None:
        """Until ``predicate(deliveries)`` holds; raises TimeoutError after ``timeout``."""
        await self._server.wait_for(lambda _requests: predicate(self.deliveries), timeout)

    async def wait_event(
        self,
        event_type: str,
        call_id: str | None = None,
        timeout: float = WAIT_TIMEOUT,  # noqa: ASYNC109
    ) -> Delivery:
        """The first event of this type (of this call); waits for it if not there yet."""
        try:
            await self.wait_for(lambda _d: bool(self.find(event_type, call_id)), timeout)
        except TimeoutError:
            raise AssertionError(
                f"no {event_type} event (call {call_id}) within {timeout:g} s; got "
                f"{[(e.call_id, e.sequence, e.type) for e in self.events()]}"
            ) from None
        return self.find(event_type, call_id)[0]

    async def wait_ended(
        self,
        count: int = 1,
        timeout: float = WAIT_TIMEOUT,  # noqa: ASYNC109
    ) -> list[Delivery]:
        """The first ``count`` call.ended events (of distinct calls), waiting as needed."""

        def ended() -> list[Delivery]:
            return self.find("call.ended")

        try:
            await self.wait_for(lambda _d: len(ended()) >= count, timeout)
        except TimeoutError:
            raise AssertionError(
                f"{len(ended())} of {count} call.ended events within {timeout:g} s; got "
                f"{[(e.call_id, e.sequence, e.type) for e in self.events()]}"
            ) from None
        return ended()[:count]

    def __repr__(self) -> str:
        return f"WebhookReceiver({self.url()!r}, {len(self.deliveries)} deliveries)"
