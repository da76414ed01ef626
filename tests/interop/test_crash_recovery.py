"""Crash recovery, end to end: `callctl serve` killed with SIGKILL mid-call, then restarted.

The service runs as a real subprocess (free HTTP and SIP ports, this test's database: a
SQLite file, or PostgreSQL with CALLCTL_TEST_DATABASE_URL) and posts its webhooks to a real
receiver on loopback. SIPp plays three far ends: a callee that answered (established), a
callee still ringing, and a caller whose call callctl never answered. Events are in flight
at the kill: the receiver fails every ``call.answered`` with 500, so that event (and what
follows it) is still pending. After the restart on the same database and ports:

* SIPp got a BYE for the established call, a CANCEL with the INVITE's branch for the ringing
  one (read from SIPp's message log), and a 480 for the unanswered inbound one;
* the receiver got every event of every call in per-call order, sequences 1..n without gaps
  (repeats of an event already acknowledged are allowed), each call ending ``call.ended``
  with cause ``shutdown`` by ``system``;
* ``GET /v1/calls`` shows no call in a non-terminal state.

Every wait is bounded and woken by what it waits for (a log line, a delivery, SIPp's exit).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from sipp import SippMessage, SippProcess, SippResult, SippRun, free_port, scenario, start_sipp
from webhook_receiver import Answer, Delivery, WebhookReceiver

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"callctl-crash-recovery-key").decode()
#: Bounds of the waits (failure bounds for liveness, never timing assertions).
START_TIMEOUT = 30.0
WAIT = 20.0
SIPP_TIMEOUT = 60.0


class ServiceProcess:
    """`callctl serve` as a subprocess; its stderr (the log) is read line by line."""

    def __init__(self, env: Mapping[str, str], http_port: int, sip_port: int) -> None:
        self.env = dict(env)
        self.http_port = http_port
        self.sip_port = sip_port
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def sip_addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.sip_port)

    async def start(self) -> None:
        self.lines = []
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            cwd=REPO,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        await self.wait_line("callctl ready", START_TIMEOUT)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            async with self._changed:
                self.lines.append(line.decode("utf-8", "replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_line(self, text: str, timeout: float = WAIT) -> str:  # noqa: ASYNC109
        """The first log line containing ``text`` (waiting for it), or fail with the log."""

        def found() -> str | None:
            return next((line for line in self.lines if text in line), None)

        try:
            async with asyncio.timeout(timeout), self._changed:
                while (line := found()) is None:
                    if self._reader is not None and self._reader.done():
                        break
                    await self._changed.wait()
        except TimeoutError:
            pass
        line = found()
        if line is None:
            log = "\n".join(self.lines[-60:])
            pytest.fail(f"no log line with {text!r} within {timeout:g}s; log:\n{log}")
        return line

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self._finish()

    async def terminate(self) -> int:
        """SIGTERM; the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self._finish()

    async def wait_exit(self) -> int:
        """The exit code, once the process ends by itself (e.g. after a drain)."""
        return await self._finish()

    async def _finish(self) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), START_TIMEOUT)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, WAIT)
        return code

    async def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            with contextlib.suppress(Exception):
                await self._finish()


def service_env(database_url: str, receiver: WebhookReceiver, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CALLCTL_")}
    env.update(
        {
            "CALLCTL_DATABASE_URL": database_url,
            "CALLCTL_HTTP_HOST": "127.0.0.1",
            "CALLCTL_HTTP_PORT": str(free_port()),
            "CALLCTL_SIP_HOST": "127.0.0.1",
            "CALLCTL_SIP_PORT": str(free_port()),
            "CALLCTL_SIP_TRANSPORTS": "udp",
            "CALLCTL_WEBHOOK_URL": receiver.url(),
            "CALLCTL_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "CALLCTL_WEBHOOK_ALLOW_PRIVATE": "true",
            "CALLCTL_WEBHOOK_RETRY_SCHEDULE": "0.3,0.5,1,1,1,1,1,1,1,1",
            "CALLCTL_WEBHOOK_TIMEOUT": "5",
            "CALLCTL_T1_MS": "100",
            "CALLCTL_T2_MS": "400",
            "CALLCTL_INBOUND_TIMEOUT": "120",
            "CALLCTL_LOG_LEVEL": "INFO",
        }
    )
    env.update(extra)
    return env


@contextlib.asynccontextmanager
async def service_process(env: Mapping[str, str]) -> AsyncIterator[ServiceProcess]:
    process = ServiceProcess(env, int(env["CALLCTL_HTTP_PORT"]), int(env["CALLCTL_SIP_PORT"]))
    try:
        yield process
    finally:
        await process.stop_quietly()


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[WebhookReceiver]:
    receiver = WebhookReceiver(secret=WEBHOOK_SECRET)
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def uas_run(workdir: Path, name: str) -> SippRun:
    """SIPp as a callee on a free port, one call, bounded."""
    return SippRun(
        scenario=scenario(name),
        workdir=workdir,
        calls=1,
        timeout=SIPP_TIMEOUT,
        local_port=free_port(),
    )


def uac_run(workdir: Path, name: str, remote: tuple[str, int]) -> SippRun:
    return SippRun(
        scenario=scenario(name), workdir=workdir, remote=remote, calls=1, timeout=SIPP_TIMEOUT
    )


async def dial(http: httpx.AsyncClient, sipp: SippProcess, **body: Any) -> dict[str, Any]:
    response = await http.post(
        "/v1/calls", json={"to": f"sip:bob@127.0.0.1:{sipp.local_port}", **body}
    )
    assert response.status_code == 201, response.text
    call: dict[str, Any] = response.json()
    return call


def first(messages: list[SippMessage], method: str) -> SippMessage:
    found = [m for m in messages if m.method == method]
    assert found, f"no {method} in {[m.start_line for m in messages]}"
    return found[0]


def branch_of(message: SippMessage) -> str:
    via = message.header("Via") or ""
    match = re.search(r";\s*branch=([^;,\s]+)", via)
    assert match, via
    return match.group(1)


def sent_by_of(message: SippMessage) -> str:
    via = message.header("Via") or ""
    return via.split(";", 1)[0].split()[-1]


def check_call_stream(receiver: WebhookReceiver, call_id: str) -> list[Delivery]:
    """Every event of the call once, in order, sequences 1..n, signed; repeats only of
    events that were delivered before (at least once), never out of order."""
    events = receiver.events(call_id)
    assert events, f"no events for {call_id}"
    assert [e.sequence for e in events] == list(range(1, len(events) + 1)), [
        (e.sequence, e.type) for e in events
    ]
    assert events[0].type == "call.initiated" and events[-1].type == "call.ended"
    # Deliveries of this call in arrival order: a sequence may repeat (retry of a failed
    # or unacknowledged attempt), but never goes back past one that got a 2xx.
    acknowledged = 0
    for delivery in receiver.deliveries:
        if delivery.envelope is None or delivery.call_id != call_id:
            continue
        assert delivery.signature_ok, delivery.headers
        assert delivery.sequence <= acknowledged + 1, (
            f"event {delivery.sequence} of {call_id} before {acknowledged + 1} was acknowledged"
        )
        if 200 <= delivery.answer.status < 300:
            acknowledged = max(acknowledged, delivery.sequence)
    return events


async def sipp_done(process: SippProcess) -> SippResult:
    result = await process.wait()
    assert result.ok, result.describe()
    return result


# -- the test ------------------------------------------------------------------------------


async def test_calls_left_by_a_killed_process_are_ended_after_restart(
    empty_database_url: str, tmp_path: Path
) -> None:
    workdir = tmp_path / "sipp"
    async with webhook_receiver() as receiver:
        failing = True

        def answered_fails(delivery: Delivery) -> Answer | None:
            # Events in flight at the kill: every call.answered fails until the restart.
            if failing and delivery.envelope is not None and delivery.type == "call.answered":
                return Answer(status=500)
            return None

        receiver.respond_with(answered_fails)
        env = service_env(empty_database_url, receiver)
        async with service_process(env) as service:
            await service.start()
            answering = await start_sipp(uas_run(workdir, "crash_uas_answer.xml"))
            ringing = await start_sipp(uas_run(workdir, "crash_uas_ringing.xml"))
            try:
                async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
                    established = (await dial(http, answering))["id"]
                    early = (await dial(http, ringing))["id"]
                caller = await start_sipp(
                    uac_run(workdir, "crash_uac_unanswered.xml", service.sip_addr)
                )

                # The state to recover is committed: each of these events is written in
                # the transaction of its state change.
                await receiver.wait_for(
                    lambda _d: bool(receiver.find("call.answered", established))
                )
                await receiver.wait_event("call.progress", early, timeout=WAIT)
                await receiver.wait_for(
                    lambda _d: any(
                        e.type == "call.progress" and e.call["direction"] == "inbound"
                        for e in receiver.events()
                    )
                )
                inbound = next(
                    e.call_id
                    for e in receiver.events()
                    if e.type == "call.initiated" and e.call["direction"] == "inbound"
                )
                assert not receiver.find("call.ended")
                failed = [d for d in receiver.deliveries if d.answer.status == 500]
                assert failed and all(d.call_id == established for d in failed)

                await service.kill()
                failing = False
                await service.start()  # same database, same ports
                await service.wait_line("ended after restart", WAIT)

                answered_result = await sipp_done(answering)
                ringing_result = await sipp_done(ringing)
                caller_result = await sipp_done(caller)
            finally:
                for process in (answering, ringing):
                    await process.terminate()

            # SIPp got the BYE of the established dialog (RFC 3261 §15.1.1) ...
            received = answered_result.received()
            invite = first(received, "INVITE")
            bye = first(received, "BYE")
            assert bye.header("Call-ID") == invite.header("Call-ID")
            assert "tag=" in (bye.header("To") or "")
            # ... the CANCEL of the ringing INVITE, with its branch and sent-by (§9.1) ...
            received = ringing_result.received()
            invite, cancel = first(received, "INVITE"), first(received, "CANCEL")
            assert branch_of(cancel) == branch_of(invite)
            assert sent_by_of(cancel) == sent_by_of(invite)
            assert cancel.start_line.split()[1] == invite.start_line.split()[1]
            assert (cancel.header("CSeq") or "").split()[0] == (
                invite.header("CSeq") or ""
            ).split()[0]
            ack = first(received, "ACK")  # the 487's ACK, in the INVITE's transaction
            assert branch_of(ack) == branch_of(invite)
            # ... and the unanswered caller a 480 (with the tag of our 180).
            finals = [m for m in caller_result.received() if (m.status or 0) >= 200]
            assert [m.status for m in finals][:1] == [480]

            ended = await receiver.wait_ended(3, timeout=WAIT)
            assert {e.call_id for e in ended} == {established, early, inbound}
            for call_id in (established, early, inbound):
                events = check_call_stream(receiver, call_id)
                end = events[-1].call["end"]
                assert (end["cause"], end["by"]) == ("shutdown", "system"), end
            assert [e.type for e in receiver.events(established)] == [
                "call.initiated",
                "call.progress",
                "call.answered",
                "call.ended",
            ]

            async with httpx.AsyncClient(base_url=service.base_url, timeout=10) as http:
                listed = (await http.get("/v1/calls", params={"limit": "100"})).json()["data"]
                assert {c["id"] for c in listed} == {established, early, inbound}
                assert {c["state"] for c in listed} == {"terminated"}
            assert await service.terminate() == 0
