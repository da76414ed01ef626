"""A small harness that runs SIPp against a peer on loopback, bounded and traced.

Every run is bounded three times over: SIPp's own `-m` (calls) and `-timeout`/`-timeout_error`,
coreutils `timeout -k` around the process (SIPp may ignore SIGINT under load, see
SIPP-NOTES.md), and an asyncio `wait_for` on the process in Python. The message log
(`-trace_msg`) is parsed into exact bytes per message so tests can compare what SIPp sent and
received byte for byte. Nothing here sleeps: the caller awaits the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

SCENARIO_DIR = Path(__file__).parent / "scenarios"

#: Seconds SIPp may run before its own `-timeout` ends it (and the run counts as failed).
DEFAULT_RUN_TIMEOUT = 15.0
#: Extra seconds coreutils `timeout` grants before SIGTERM, then `-k` before SIGKILL.
_KILL_GRACE = 3.0
#: Attempts on fresh ports when SIPp cannot bind (exit -2 / bind error on stderr).
_BIND_ATTEMPTS = 3

Direction = Literal["sent", "received"]

# "----...---- 2026-11-22 00:40:52.148336\nUDP message received [309] bytes :\n\n"
# "----...---- 2026-11-22 00:40:52.148336\nTCP message sent (511 bytes):\n\n"
_ENTRY_RE = re.compile(
    rb"^-{20,} (?P<ts>[^\n]*)\n"
    rb"(?P<transport>[A-Z]+) message (?:"
    rb"(?P<recv>received) \[(?P<rlen>\d+)\] bytes :"
    rb"|(?P<sent>sent) \((?P<slen>\d+) bytes\):"
    rb")\n\n",
    re.MULTILINE,
)


def sipp_path() -> str | None:
    """The `sipp` executable on PATH, or None."""
    return shutil.which("sipp")


def timeout_path() -> str | None:
    """coreutils `timeout` on PATH, or None (then only the Python-side bound applies)."""
    return shutil.which("timeout")


def free_port(host: str = "127.0.0.1") -> int:
    """A port number free for both UDP and TCP on `host` right now (bind port 0 to find one)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no port free for both UDP and TCP")


@dataclass(frozen=True, slots=True, kw_only=True)
class SippMessage:
    """One entry of SIPp's message log: the exact bytes SIPp sent or received."""

    direction: Direction
    transport: str
    timestamp: str
    data: bytes

    @property
    def start_line(self) -> str:
        return self.data.split(b"\r\n", 1)[0].decode("utf-8", "replace")

    @property
    def status(self) -> int | None:
        """Status code for a response, None for a request."""
        parts = self.start_line.split(" ", 2)
        if parts[0].startswith("SIP/") and len(parts) >= 2 and parts[1].isdigit():
            return int(parts[1])
        return None

    @property
    def reason(self) -> str:
        parts = self.start_line.split(" ", 2)
        return parts[2] if self.status is not None and len(parts) == 3 else ""

    @property
    def method(self) -> str | None:
        """Method for a request, None for a response."""
        return None if self.status is not None else self.start_line.split(" ", 1)[0]

    def header_values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive, no compact forms, no folding)."""
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        wanted = name.lower()
        values = []
        for line in head.split("\r\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == wanted:
                values.append(value.strip())
        return values

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return values[0] if values else None


@dataclass(frozen=True, slots=True, kw_only=True)
class SippResult:
    """What one SIPp run did."""

    command: tuple[str, ...]
    returncode: int
    messages: tuple[SippMessage, ...]
    errors: str
    logs: str
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """All calls succeeded (SIPp exit code 0)."""
        return self.returncode == 0 and not self.timed_out

    def received(self) -> list[SippMessage]:
        return [m for m in self.messages if m.direction == "received"]

    def sent(self) -> list[SippMessage]:
        return [m for m in self.messages if m.direction == "sent"]

    def responses(self, status: int | None = None) -> list[SippMessage]:
        """Responses SIPp received, optionally only those with `status`."""
        return [
            m
            for m in self.received()
            if m.status is not None and (status is None or m.status == status)
        ]

    def describe(self) -> str:
        """A failure description for assertion messages: command, exit, logs, messages."""
        trace = "\n".join(
            f"--- {m.direction} {m.transport} {m.timestamp}\n" + m.data.decode("utf-8", "replace")
            for m in self.messages
        )
        return (
            f"sipp exit {self.returncode} (timed out: {self.timed_out})\n"
            f"command: {' '.join(self.command)}\n"
            f"stderr: {self.stderr[-2000:]}\nerrors: {self.errors[-4000:]}\n"
            f"logs: {self.logs[-2000:]}\nmessages:\n{trace}"
        )

_LOSS_NOTE = re.compile(rb"(UDP message (?:voluntary lost \(while sending\)|lost \(recv\))\.)")


def parse_message_log(raw: bytes) -> list[SippMessage]:
    """Split a SIPp `-trace_msg` log into messages with their exact bytes.

    Each entry's header gives the message length, so a body that happens to contain a line
    looking like an entry header cannot split a message.
    """
    # Under `-lost`, SIPp writes its loss note with no line break before the next entry's
    # dashes; put one in so that entry is not missed.
    raw = _LOSS_NOTE.sub(rb"\1\n", raw)
    out: list[SippMessage] = []
    pos = 0
    while (match := _ENTRY_RE.search(raw, pos)) is not None:
        length = int(match["rlen"] or match["slen"])
        start = match.end()
        out.append(
            SippMessage(
                direction="received" if match["recv"] else "sent",
                transport=match["transport"].decode(),
                timestamp=match["ts"].decode(),
                data=raw[start : start + length],
            )
        )
        pos = start + length
    return out


@dataclass(slots=True, kw_only=True)
class SippRun:
    """Parameters of one SIPp run. `remote` is the peer SIPp talks to (UAC role)."""

    scenario: Path
    workdir: Path
    remote: tuple[str, int] | None = None
    transport: Literal["udp", "tcp"] = "udp"
    calls: int = 1
    timeout: float = DEFAULT_RUN_TIMEOUT
    local_host: str = "127.0.0.1"
    local_port: int | None = None
    keys: Mapping[str, str] = field(default_factory=dict)
    extra_args: Sequence[str] = ()

    def command(self, *, local_port: int, control_port: int, tag: str) -> list[str]:
        sipp = sipp_path()
        if sipp is None:
            raise RuntimeError("sipp is not on PATH")
        cmd: list[str] = []
        coreutils_timeout = timeout_path()
        if coreutils_timeout is not None:
            hard = self.timeout + _KILL_GRACE
            cmd += [coreutils_timeout, "-k", f"{_KILL_GRACE:g}", f"{hard:g}"]
        cmd += [sipp]
        if self.remote is not None:
            cmd += [f"{self.remote[0]}:{self.remote[1]}"]
        cmd += [
            "-sf", str(self.scenario),
            "-i", self.local_host,
            "-p", str(local_port),
            "-cp", str(control_port),
            "-t", "t1" if self.transport == "tcp" else "u1",
            "-m", str(self.calls),
            "-timeout", f"{self.timeout:g}s",
            "-timeout_error",
            "-nostdin",
            "-trace_msg", "-message_file", str(self.workdir / f"{tag}_messages.log"),
            "-trace_err", "-error_file", str(self.workdir / f"{tag}_errors.log"),
            "-trace_logs", "-log_file", str(self.workdir / f"{tag}_logs.log"),
        ]  # fmt: skip
        for key, value in self.keys.items():
            cmd += ["-key", key, value]
        cmd += list(self.extra_args)
        return cmd


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


class SippProcess:
    """A started SIPp run; `await wait()` for its result (bounded)."""

    def __init__(
        self,
        run: SippRun,
        proc: asyncio.subprocess.Process,
        command: list[str],
        tag: str,
        local_port: int,
    ) -> None:
        self.run = run
        self.proc = proc
        self.command = command
        self.tag = tag
        self.local_port = local_port

    @property
    def message_log(self) -> Path:
        return self.run.workdir / f"{self.tag}_messages.log"

    def messages_so_far(self) -> list[SippMessage]:
        """Messages logged until now (SIPp flushes the log per message)."""
        return parse_message_log(_read(self.message_log))

    async def wait(self) -> SippResult:
        timed_out = False
        try:
            stdout, stderr = await asyncio.wait_for(
                self.proc.communicate(), self.run.timeout + 2 * _KILL_GRACE + 2.0
            )
        except TimeoutError:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            stdout, stderr = await self.proc.communicate()
        wd = self.run.workdir
        rc = self.proc.returncode
        return SippResult(
            command=tuple(self.command),
            returncode=rc if rc is not None else -9,
            messages=tuple(parse_message_log(_read(self.message_log))),
            errors=_read(wd / f"{self.tag}_errors.log").decode("utf-8", "replace"),
            logs=_read(wd / f"{self.tag}_logs.log").decode("utf-8", "replace"),
            stdout=stdout.decode("utf-8", "replace"),
            stderr=stderr.decode("utf-8", "replace"),
            timed_out=timed_out or rc == 124,
        )

    async def terminate(self) -> None:
        """Stop SIPp early (used by fixtures on failure paths)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


_run_counter = 0


async def start_sipp(run: SippRun) -> SippProcess:
    """Start SIPp; the caller awaits `.wait()`. Used directly when SIPp is the server side."""
    global _run_counter
    _run_counter += 1
    run.workdir.mkdir(parents=True, exist_ok=True)
    local_port = run.local_port if run.local_port is not None else free_port(run.local_host)
    tag = f"sipp{_run_counter}_{run.scenario.stem}_{run.transport}"
    command = run.command(local_port=local_port, control_port=free_port(), tag=tag)
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=run.workdir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return SippProcess(run, proc, command, tag, local_port)


def _bind_failed(result: SippResult) -> bool:
    # SIPp exits -2 (254) when it cannot bind; the control port failure is logged on stderr.
    text = (result.stderr + result.errors).lower()
    return result.returncode in (254, 255) and ("bind" in text or "address already" in text)


async def run_sipp(run: SippRun) -> SippResult:
    """Run SIPp to completion, retrying on fresh ports if it could not bind."""
    result: SippResult | None = None
    for _ in range(_BIND_ATTEMPTS):
        process = await start_sipp(run)
        result = await process.wait()
        if not _bind_failed(result) or run.local_port is not None:
            return result
    assert result is not None
    return result


def scenario(name: str) -> Path:
    """Path of one of the project's scenario files in tests/interop/scenarios/."""
    path = SCENARIO_DIR / name
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def same_bytes(messages: Iterable[SippMessage]) -> bool:
    """True when all given messages have identical bytes (and there is at least one)."""
    datas = {m.data for m in messages}
    return len(datas) == 1
