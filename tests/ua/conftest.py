"""Fixtures of the UA tests: a link with two user agents and real RTP handlers."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from app.media import PortPool, RtpSdhFactory, RtpSessionDescriptionHandler
from app.sip.events import RequestReceived
from app.sip.message import Response
from app.ua import Inviter, UserAgent
from app.ua.invitation import Invitation
from tests.ua.link import ADDRS, Callee, Link, Recorder
from tests.ua.raw import RawUac

LOOPBACK = "127.0.0.1"
B_URI = f"sip:bob@{ADDRS['b'][0]}:{ADDRS['b'][1]}"
A_URI = f"sip:alice@{ADDRS['a'][0]}:{ADDRS['a'][1]}"


def _can_bind(port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((LOOPBACK, port))
    except OSError:
        return False
    finally:
        sock.close()
    return True


def free_port_range(count: int) -> tuple[int, int]:
    """An even-aligned run of free loopback UDP ports below the ephemeral range."""
    rng = random.Random()
    for _ in range(200):
        low = rng.randrange(22000, 32000 - count) & ~1
        if all(_can_bind(p) for p in range(low, low + count)):
            return low, low + count - 1
    raise RuntimeError("no free UDP port range on loopback")


class TrackingFactory:
    """An ``RtpSdhFactory`` that remembers its handlers, to free their ports at the end."""

    def __init__(self, inner: RtpSdhFactory) -> None:
        self.inner = inner
        self.handlers: list[RtpSessionDescriptionHandler] = []

    def __call__(self) -> RtpSessionDescriptionHandler:
        handler = self.inner()
        self.handlers.append(handler)
        return handler

    async def wait_closed(self) -> None:
        for handler in self.handlers:
            await handler.wait_closed()


@pytest.fixture
async def factory() -> AsyncIterator[TrackingFactory]:
    pool = PortPool(*free_port_range(64))
    tracking = TrackingFactory(RtpSdhFactory(LOOPBACK, LOOPBACK, pool))
    yield tracking
    await tracking.wait_closed()


@dataclass
class Pair:
    """Alice (side a, calls out) and Bob (side b, a Callee delegate) over one link."""

    link: Link
    a: UserAgent
    b: UserAgent
    callee: Callee
    factory: TrackingFactory

    def inviter(self, target: str = B_URI, **kwargs: Any) -> tuple[Inviter, Recorder]:
        inviter = Inviter(self.a, target, **kwargs)
        rec = Recorder()
        inviter.delegate = rec
        return inviter, rec

    async def call(self, target: str = B_URI, **kwargs: Any) -> tuple[Inviter, Recorder]:
        """Alice invites Bob; returns once Bob rings."""
        inviter, rec = self.inviter(target, **kwargs)
        await inviter.invite()
        await self.link.settle()
        return inviter, rec

    async def established(self, **kwargs: Any) -> tuple[Inviter, Recorder, Invitation, Recorder]:
        inviter, rec = await self.call(**kwargs)
        invitation = self.callee.last
        await invitation.accept()
        await self.link.settle()
        return inviter, rec, invitation, self.callee.rec


def make_pair(factory: TrackingFactory, **b_config: Any) -> Pair:
    link = Link()
    a = link.add_ua("a", factory, user="alice")
    callee = Callee()
    b = link.add_ua("b", factory, callee, user="bob", **b_config)
    return Pair(link=link, a=a, b=b, callee=callee, factory=factory)


@pytest.fixture
def pair(factory: TrackingFactory) -> Pair:
    return make_pair(factory)


@dataclass
class RawB:
    """Alice's UA on side a; side b is raw (the test answers by hand)."""

    link: Link
    a: UserAgent
    factory: TrackingFactory

    def inviter(self, target: str = B_URI, **kwargs: Any) -> tuple[Inviter, Recorder]:
        inviter = Inviter(self.a, target, **kwargs)
        rec = Recorder()
        inviter.delegate = rec
        return inviter, rec

    async def invite(self, **kwargs: Any) -> tuple[Inviter, Recorder, RequestReceived]:
        """Send the INVITE and return the RequestReceived side b got."""
        inviter, rec = self.inviter(**kwargs)
        await inviter.invite()
        await self.link.settle()
        got = [e for e in self.link.take("b", RequestReceived) if e.request.method == "INVITE"]
        assert len(got) == 1
        return inviter, rec, got[0]

    def respond(self, event: RequestReceived, resp: Response) -> None:
        self.link.core("b").send_response(event.server_tx, resp)


@pytest.fixture
def raw_b(factory: TrackingFactory) -> RawB:
    link = Link()
    a = link.add_ua("a", factory, user="alice")
    return RawB(link=link, a=a, factory=factory)


@dataclass
class RawA:
    """Bob's UA (a Callee) on side b; side a is a raw caller."""

    link: Link
    b: UserAgent
    callee: Callee
    uac: RawUac


def make_raw_a(factory: TrackingFactory, **b_config: Any) -> RawA:
    link = Link()
    callee = Callee()
    b = link.add_ua("b", factory, callee, user="bob", **b_config)
    return RawA(link=link, b=b, callee=callee, uac=RawUac(link))


@pytest.fixture
def raw_a(factory: TrackingFactory) -> RawA:
    return make_raw_a(factory)
