"""SIPp runner for the benchmarks: bounded runs, statistics, message times.

Every run is bounded three times over (SIPP-NOTES.md): SIPp's own ``-m`` (calls) and
``-timeout``/``-timeout_error``, coreutils ``timeout -k`` around the process, and a
Python-side deadline on ``wait()``. A run that cannot bind its ports is retried on fresh
ones.

What a run leaves behind, all in its work directory:

- ``<tag>_stat.csv`` (``-trace_stat``): the cumulative counters of the last row give
  successful/failed calls, retransmissions and the failure reasons.
- ``<tag>_counts.csv`` (``-trace_counts``): per scenario message counts (e.g. 503s received
  by the UAC when callctl sheds load).
- ``<tag>_short.log`` (``-trace_shortmsg``, only when ``trace=True``): one line per message
  with a microsecond wall-clock time, the Call-ID and the start line. SIPp's own
  ``-trace_rtt`` moves in ~4 ms steps, too coarse for sub-millisecond answers, so the
  latencies come from these lines instead.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCENARIOS = Path(__file__).parent / "scenarios"

#: Seconds coreutils ``timeout`` waits after SIPp's own -timeout, then ``-k`` before SIGKILL.
KILL_GRACE = 3.0
#: Attempts on fresh ports when SIPp cannot bind its SIP or control port.
BIND_ATTEMPTS = 3

Role = Literal["uac", "uas"]


def sipp_path() -> str | None:
    return shutil.which("sipp")


def scenario(name: str) -> Path:
    path = SCENARIOS / name
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


@dataclass(frozen=True, slots=True, kw_only=True)
class SippStats:
    """The cumulative counters of SIPp's last ``-trace_stat`` row."""

    created: int = 0
    successful: int = 0
    failed: int = 0
    retransmissions: int = 0
    out_of_call: int = 0
    dead_call: int = 0
    current: int = 0
    elapsed: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_csv(cls, path: Path) -> SippStats:
        try:
            with path.open(newline="") as handle:
                rows = list(csv.reader(handle, delimiter=";"))
        except FileNotFoundError:
            return cls()
        if len(rows) < 2:
            return cls()
        names, last = rows[0], rows[-1]
        row = dict(zip(names, last, strict=False))

        def num(name: str) -> int:
            text = row.get(name, "0").strip()
            return int(text) if text.isdigit() else 0

        failures = {
            name.removeprefix("Failed").removesuffix("(C)"): num(name)
            for name in names
            if name.startswith("Failed") and name.endswith("(C)") and name != "FailedCall(C)"
        }
        return cls(
            created=num("IncomingCall(C)") + num("OutgoingCall(C)"),
            successful=num("SuccessfulCall(C)"),
            failed=num("FailedCall(C)"),
            retransmissions=num("Retransmissions(C)"),
            out_of_call=num("OutOfCallMsgs(C)"),
            dead_call=num("DeadCallMsgs(C)"),
            current=num("CurrentCall"),
            elapsed=_hms(row.get("ElapsedTime(C)", "")),
            failures={name: count for name, count in failures.items() if count},
        )


def completed_within(path: Path, window: float, start: float | None = None) -> tuple[int, float]:
    """(successful calls, seconds) at the last ``-trace_stat`` row no later than ``window``
    (+0.5 s) after the start (SIPp's own, or the unix time ``start``): the throughput while
    the load was applied, so that calls failing on timeouts afterwards do not dilute it."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle, delimiter=";"))
    except FileNotFoundError:
        return 0, 0.0
    if len(rows) < 2:
        return 0, 0.0
    names = rows[0]
    try:
        i_start, i_now = names.index("StartTime"), names.index("CurrentTime")
        i_ok = names.index("SuccessfulCall(C)")
    except ValueError:
        return 0, 0.0
    best = (0, 0.0)
    for row in rows[1:]:
        try:
            elapsed = _epoch(row[i_now]) - (_epoch(row[i_start]) if start is None else start)
            done = int(row[i_ok])
        except (IndexError, ValueError):
            continue
        if elapsed <= window + 0.5 and elapsed > 0:
            best = (done, elapsed)
    return best


#: A step keeps up when every call completed within this many seconds after the load
#: stopped; a server that only queues (every call succeeds, later and later) does not.
KEEP_UP_GRACE = 1.0


def kept_up(path: Path, window: float, calls: int, start: float | None = None) -> bool:
    """Every one of ``calls`` completed within ``window`` + :data:`KEEP_UP_GRACE` seconds."""
    done, _ = completed_within(path, window + KEEP_UP_GRACE, start)
    return done >= calls


def _epoch(cell: str) -> float:
    """``2026-11-22\t00:55:25.079021\t1795308925.079021`` -> the epoch seconds."""
    return float(cell.split("\t")[-1])


def _hms(text: str) -> float:
    """``HH:MM:SS`` or ``HH:MM:SS:uuuuuu`` to seconds."""
    parts = text.strip().split(":")
    if len(parts) < 3 or not all(part.isdigit() for part in parts):
        return 0.0
    seconds = int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2])
    return seconds + (int(parts[3]) / 1e6 if len(parts) > 3 else 0.0)


def read_counts(path: Path) -> dict[str, int]:
    """The last row of a ``-trace_counts`` file: ``{"4_503_Recv": 12, ...}``."""
    try:
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle, delimiter=";"))
    except FileNotFoundError:
        return {}
    if len(rows) < 2:
        return {}
    return {
        name: int(value)
        for name, value in zip(rows[0], rows[-1], strict=False)
        if value.strip().isdigit()
    }


def count_of(counts: dict[str, int], suffix: str) -> int:
    """Sum of the counters whose name ends with ``suffix`` (e.g. ``_503_Recv``)."""
    return sum(value for name, value in counts.items() if name.endswith(suffix))


def answered_and_completed(counts: dict[str, int]) -> tuple[int, int]:
    """UAC (uac_call.xml): (INVITEs answered 2xx, BYEs answered 2xx) from its message
    counts; the first ``<n>_200_Recv`` column is the INVITE's, the second the BYE's."""
    oks = sorted(
        (int(name.split("_", 1)[0]), value)
        for name, value in counts.items()
        if name.endswith("_200_Recv") and name.split("_", 1)[0].isdigit()
    )
    answered = oks[0][1] if oks else 0
    completed = oks[1][1] if len(oks) > 1 else 0
    return answered, completed


@dataclass(frozen=True, slots=True)
class ShortMessage:
    """One ``-trace_shortmsg`` line."""

    time: float  # unix seconds, microsecond resolution
    sent: bool
    call_id: str
    cseq: str  # "1 INVITE"
    start_line: str


def read_short_messages(path: Path) -> Iterator[ShortMessage]:
    """Lines: ``date<TAB>time<TAB>epoch<TAB>S|R<TAB>call-id<TAB>CSeq:1 INVITE<TAB>line``."""
    try:
        handle = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with handle:
        for line in handle:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 7 or parts[3] not in ("S", "R"):
                continue
            try:
                when = float(parts[2])
            except ValueError:
                continue
            yield ShortMessage(
                time=when,
                sent=parts[3] == "S",
                call_id=parts[4],
                cseq=parts[5].removeprefix("CSeq:").strip(),
                start_line=parts[6],
            )


def invite_to_answer(path: Path) -> list[float]:
    """UAC side: seconds from the first INVITE sent to the first 2xx received, per call."""
    sent: dict[str, float] = {}
    out: list[float] = []
    for msg in read_short_messages(path):
        if not msg.cseq.endswith(" INVITE"):
            continue
        if msg.sent and msg.start_line.startswith("INVITE "):
            sent.setdefault(msg.call_id, msg.time)
        elif not msg.sent and msg.start_line.startswith("SIP/2.0 2"):
            start = sent.pop(msg.call_id, None)
            if start is not None:
                out.append(msg.time - start)
    return out


def invites_received(path: Path) -> dict[str, float]:
    """UAS side: Call-ID -> time the first INVITE was received."""
    out: dict[str, float] = {}
    for msg in read_short_messages(path):
        if not msg.sent and msg.start_line.startswith("INVITE "):
            out.setdefault(msg.call_id, msg.time)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SippResult:
    role: Role
    command: tuple[str, ...]
    returncode: int
    timed_out: bool
    stats: SippStats
    counts: dict[str, int]
    short_log: Path | None
    stat_path: Path
    stderr: str
    wall: float  # seconds from start to exit

    @property
    def shed(self) -> int:
        """503s the UAC received (load shedding by the peer)."""
        return count_of(self.counts, "_503_Recv")

    @property
    def clean(self) -> bool:
        """Every call of the run succeeded: exit 0, nothing failed, nothing shed."""
        return (
            self.returncode == 0
            and not self.timed_out
            and self.stats.failed == 0
            and self.shed == 0
        )


def _bind_failed(returncode: int, stderr: str) -> bool:
    text = stderr.lower()
    return returncode in (254, 255, 253) and (
        "bind" in text or "address already in use" in text or "cannot" in text
    )


class SippProcess:
    """A started SIPp; ``wait()`` returns its :class:`SippResult` (bounded)."""

    def __init__(
        self,
        *,
        role: Role,
        proc: subprocess.Popen[bytes],
        command: list[str],
        workdir: Path,
        tag: str,
        deadline: float,
        trace: bool,
        stderr_path: Path,
    ) -> None:
        self.role = role
        self.proc = proc
        self.command = command
        self.workdir = workdir
        self.tag = tag
        self.deadline = deadline
        self.trace = trace
        self.stderr_path = stderr_path
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        """SIPp's own pid (the child of coreutils ``timeout`` when that wraps it)."""
        if self.command[0] == "sipp" or Path(self.command[0]).name == "sipp":
            return self.proc.pid
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = (task / "children").read_text().split()
                if children:
                    return int(children[0])
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def stats_so_far(self) -> SippStats:
        return SippStats.from_csv(self.workdir / "stat.csv")

    def counts_so_far(self) -> dict[str, int]:
        return read_counts(self._counts_path())

    def _counts_path(self) -> Path:
        # -trace_counts has no file-name option: <scenario>_<pid>_counts.csv in the cwd,
        # which is this run's own folder.
        found = sorted(self.workdir.glob("*_counts.csv"))
        return found[0] if found else self.workdir / "counts.csv"

    def stop(self) -> None:
        """Ask SIPp to stop now (SIGUSR1 is its "quit" on a -bg/-nostdin run), then kill."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGUSR1)
            try:
                self.proc.wait(timeout=KILL_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait()

    def wait_exit(self, seconds: float) -> None:
        """Give SIPp ``seconds`` to exit by itself, then :meth:`stop` it."""
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.stop()

    def wait(self) -> SippResult:
        timed_out = False
        try:
            self.proc.wait(timeout=max(0.1, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        wall = time.monotonic() - self.started
        rc = self.proc.returncode
        try:
            stderr = self.stderr_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            stderr = ""
        short = self.workdir / "short.log"
        return SippResult(
            role=self.role,
            command=tuple(self.command),
            returncode=rc if rc is not None else -9,
            # 124: coreutils timeout fired (SIPp ignored its own -timeout).
            timed_out=timed_out or rc in (124, 137),
            stats=SippStats.from_csv(self.workdir / "stat.csv"),
            counts=read_counts(self._counts_path()),
            stat_path=self.workdir / "stat.csv",
            short_log=short if self.trace else None,
            stderr=stderr,
            wall=wall,
        )


_counter = 0


def _preexec(cpus: Sequence[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, set(cpus))


def start_sipp(
    *,
    role: Role,
    scenario_file: Path,
    workdir: Path,
    port: int,
    control_port: int,
    remote: tuple[str, int] | None = None,
    calls: int,
    rate: float | None = None,
    limit: int | None = None,
    hold_ms: int = 0,
    timeout: float,
    trace: bool = False,
    service: str = "bench",
    cpus: Sequence[int] | None = None,
    extra: Sequence[str] = (),
    host: str = "127.0.0.1",
) -> SippProcess:
    """Start one SIPp in the background (no terminal): the caller ``wait()``s for it.

    ``calls`` is ``-m`` (SIPp exits after that many calls), ``timeout`` SIPp's global
    ``-timeout`` (then the run fails), bounded again by ``timeout -k`` and ``wait()``.
    """
    sipp = sipp_path()
    if sipp is None:
        raise RuntimeError("sipp is not on PATH (Debian/Ubuntu package 'sip-tester')")
    global _counter
    _counter += 1
    tag = f"{_counter:03d}_{role}_{scenario_file.stem}"
    # Each run gets its own folder: -trace_counts names its file by pid in the cwd. A
    # --workdir used before holds a folder of this name from an earlier run: its files
    # (another pid's counts, stat rows) would be read as this run's, so it is emptied.
    workdir = workdir / tag
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    cmd: list[str] = []
    coreutils_timeout = shutil.which("timeout")
    if coreutils_timeout is not None:
        cmd += [coreutils_timeout, "-k", f"{KILL_GRACE:g}", f"{timeout + KILL_GRACE:g}"]
    cmd.append(sipp)
    if remote is not None:
        cmd.append(f"{remote[0]}:{remote[1]}")
    cmd += [
        "-sf", str(scenario_file),
        "-i", host,
        "-p", str(port),
        "-cp", str(control_port),
        "-t", "u1",
        "-m", str(calls),
        "-timeout", f"{timeout:g}s",
        "-timeout_error",
        "-nostdin",
        "-s", service,
        "-d", str(hold_ms),
        "-trace_stat", "-stf", str(workdir / "stat.csv"), "-fd", "1",
        "-trace_counts",
        "-trace_err", "-error_file", str(workdir / "errors.log"),
        # Large socket buffers: bursts of a few thousand datagrams must not be dropped.
        "-buff_size", str(4 * 1024 * 1024),
        "-max_recv_loops", "10000",
        "-max_sched_loops", "10000",
    ]  # fmt: skip
    if rate is not None:
        cmd += ["-r", f"{rate:g}", "-rp", "1000"]
    if limit is not None:
        cmd += ["-l", str(limit)]
    if trace:
        cmd += ["-trace_shortmsg", "-shortmessage_file", str(workdir / "short.log")]
    cmd += list(extra)
    stderr_path = workdir / "stderr.log"
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            preexec_fn=(lambda: _preexec(cpus)) if cpus else None,
        )
    return SippProcess(
        role=role,
        proc=proc,
        command=cmd,
        workdir=workdir,
        tag=tag,
        deadline=time.monotonic() + timeout + 2 * KILL_GRACE + 5.0,
        trace=trace,
        stderr_path=stderr_path,
    )


def bind_failed(result: SippResult) -> bool:
    """SIPp could not bind its SIP or control port: retry on fresh ports."""
    return _bind_failed(result.returncode, result.stderr)


# -- the two roles the benchmarks use ------------------------------------------------------

#: A call waiting longer than this for a response fails (SIPp -recv_timeout), so that an
#: overloaded peer ends a run within bounds instead of after 64*T1 per call.
RECV_TIMEOUT_MS = 10_000
#: INVITE retransmissions before the call fails (500 ms doubling: ~7.5 s in all).
MAX_INVITE_RETRANS = 4


def start_uac(
    *,
    workdir: Path,
    remote: tuple[str, int],
    rate: float,
    calls: int,
    free_port: Callable[[], int],
    hold_ms: int = 0,
    limit: int | None = None,
    trace: bool = False,
    cpus: Sequence[int] | None = None,
    service: str = "bench",
    timeout: float | None = None,
) -> SippProcess:
    """Start the benchmark UAC (scenarios/uac_call.xml): ``calls`` calls at ``rate`` per
    second (at most ``limit`` at once), each BYE'd ``hold_ms`` after its ACK."""
    if timeout is None:
        timeout = calls / rate + hold_ms / 1000 + RECV_TIMEOUT_MS / 1000 + 15
    return start_sipp(
        role="uac",
        scenario_file=scenario("uac_call.xml"),
        workdir=workdir,
        port=free_port(),
        control_port=free_port(),
        remote=remote,
        calls=calls,
        rate=rate,
        limit=limit,
        hold_ms=hold_ms,
        timeout=timeout,
        trace=trace,
        cpus=cpus,
        service=service,
        extra=(
            "-recv_timeout", str(RECV_TIMEOUT_MS + hold_ms),
            "-max_invite_retrans", str(MAX_INVITE_RETRANS),
        ),
    )  # fmt: skip


def run_uac(**kwargs: Any) -> SippResult:
    """:func:`start_uac` and wait for it; retried on fresh ports when SIPp cannot bind."""
    result: SippResult | None = None
    for _ in range(BIND_ATTEMPTS):
        result = start_uac(**kwargs).wait()
        if not bind_failed(result):
            return result
    assert result is not None
    return result


def start_uas(
    *,
    workdir: Path,
    scenario_name: str,
    calls: int,
    timeout: float,
    free_port: Callable[[], int],
    trace: bool = False,
    cpus: Sequence[int] | None = None,
) -> tuple[SippProcess, int]:
    """Start a SIPp UAS (``-m calls``) in the background; returns it and its SIP port.
    A UAS that cannot bind exits at once: that is checked and retried on fresh ports."""
    for attempt in range(BIND_ATTEMPTS):
        port = free_port()
        proc = start_sipp(
            role="uas",
            scenario_file=scenario(scenario_name),
            workdir=workdir,
            port=port,
            control_port=free_port(),
            calls=calls,
            timeout=timeout,
            trace=trace,
            cpus=cpus,
        )
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and proc.running():
            time.sleep(0.05)
        if proc.running():
            return proc, port
        result = proc.wait()
        if not bind_failed(result) or attempt == BIND_ATTEMPTS - 1:
            raise RuntimeError(f"SIPp UAS exited at start ({result.returncode}): {result.stderr}")
    raise RuntimeError("unreachable")
