"""Shared pieces of the SIPp/callctl benchmarks: ports, CPUs, processes, rate search, output.

Everything runs on loopback and is started and stopped here:

- :class:`Service`: ``callctl serve`` as a subprocess on free ports, with a temporary SQLite
  database or a fresh PostgreSQL database (dropped afterwards), pinned to the service CPU.
- :class:`Receiver`: ``python -m bench.receiver`` (the webhook receiver) on the load CPU.
- :func:`find_max_clean`: step the rate up (x2) until a step is not clean, then bisect.
- :func:`percentiles`, :func:`print_table`, :func:`write_results`.

CPU plan: on a machine with 2+ CPUs the system under test (callctl, or the reference SIPp
UAS for the limit) gets CPU 0 and every load generator (SIPp UAC, receiver, HTTP load
client, this process) CPU 1, so that the two sides do not steal each other's time and
runs repeat. ``--no-pin`` turns it off.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"

# Ports the harness hands out: below the RTP range and below Linux's ephemeral range
# (32768-60999), so that nothing the kernel picks for a client socket collides with them.
_PORT_LOW, _PORT_HIGH = 10000, 19999
#: RTP/RTCP ports given to callctl: 20000 and up (2 per call; the concurrency test widens it).
RTP_LOW = 20000
_next_port = _PORT_LOW + (os.getpid() * 7) % 4000


def free_port(host: str = "127.0.0.1") -> int:
    """A port in 10000-19999 free for UDP and TCP right now; never the same twice per run."""
    global _next_port
    for _ in range(_PORT_HIGH - _PORT_LOW):
        port = _next_port
        _next_port = _PORT_LOW if _next_port >= _PORT_HIGH else _next_port + 1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind((host, port))
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port in 10000-19999")


# -- CPUs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuPlan:
    service: tuple[int, ...] | None  # callctl / reference UAS
    load: tuple[int, ...] | None  # SIPp UAC, receiver, load client, the harness

    @classmethod
    def make(cls, pin: bool) -> CpuPlan:
        cpus = sorted(os.sched_getaffinity(0))
        if not pin or len(cpus) < 2:
            return cls(None, None)
        return cls((cpus[0],), tuple(cpus[1:]))

    def pin_self(self) -> None:
        if self.load:
            os.sched_setaffinity(0, set(self.load))


# -- /proc --------------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (0 when gone)."""
    return _status_field(pid, "VmRSS:")


def hwm_kib(pid: int) -> int:
    """VmHWM (peak RSS) of a process in KiB."""
    return _status_field(pid, "VmHWM:")


def _status_field(pid: int, name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith(name):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # The command name may hold spaces: fields start after the last ')'.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


# -- statistics ---------------------------------------------------------------------------


def percentiles(values: Sequence[float], scale: float = 1000.0) -> dict[str, float | int]:
    """count, p50, p90, p99, max of seconds, in milliseconds (``scale``)."""
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def pick(q: float) -> float:
        index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        return round(ordered[index] * scale, 3)

    return {
        "count": len(ordered),
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": round(ordered[-1] * scale, 3),
    }


def ratio(value: float | None, limit: float | None) -> float | None:
    if value is None or not limit:
        return None
    return round(value / limit, 4)


# -- processes ----------------------------------------------------------------------------


#: File descriptors wanted for callctl and SIPp: 10,000 held calls take 20,000 RTP/RTCP
#: sockets in callctl alone.
WANT_NOFILE = 65536


def raise_nofile() -> int:
    """Raise this process's RLIMIT_NOFILE (children inherit it): soft and hard to
    :data:`WANT_NOFILE` where allowed (CAP_SYS_RESOURCE), else the soft one to the hard one. Returns
    the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < WANT_NOFILE:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (WANT_NOFILE, WANT_NOFILE))
            return WANT_NOFILE
        except (ValueError, OSError):
            pass  # may not raise the hard limit (even root, in a container)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _preexec(cpus: Sequence[int] | None, nofile: bool) -> Callable[[], None]:
    def run() -> None:
        os.setsid()
        if cpus:
            os.sched_setaffinity(0, set(cpus))
        if nofile:
            raise_nofile()

    return run


def http_json(
    method: str, host: str, port: int, path: str, body: Any = None, timeout: float = 5.0
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, raw.decode(errors="replace")
    finally:
        conn.close()


def _stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)


class Receiver:
    """The webhook receiver process (bench/receiver.py)."""

    def __init__(self, workdir: Path, cpus: Sequence[int] | None, accept: bool = True) -> None:
        self.port = free_port()
        self.log = workdir / f"receiver_{self.port}.log"
        cmd = [sys.executable, "-m", "bench.receiver", "--port", str(self.port)]
        if not accept:
            cmd.append("--no-accept")
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_preexec(cpus, nofile=True),
            )
        try:
            wait_until(self._healthy, 10.0, "the webhook receiver did not start")
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"receiver exited: {self.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            return http_json("GET", "127.0.0.1", self.port, "/healthz", timeout=1)[0] == 200
        return False

    def stats(self) -> dict[str, Any]:
        status, body = http_json("GET", "127.0.0.1", self.port, "/stats", timeout=30)
        if status != 200 or not isinstance(body, dict):
            raise RuntimeError(f"receiver /stats: {status} {body!r}")
        return body

    def reset(self) -> None:
        http_json("POST", "127.0.0.1", self.port, "/reset", body={})

    def configure(self, answer: str, api: str) -> None:
        """Answer inbound calls in the webhook response ("webhook") or by REST ("rest")."""
        http_json("POST", "127.0.0.1", self.port, "/configure", body={"answer": answer, "api": api})

    def wait_drained(self, calls: int, timeout: float, quiet: float = 1.0) -> dict[str, Any]:
        """Wait until ``calls`` calls got ``call.ended`` (or nothing came for a while, or
        ``timeout`` passed); return the stats then. The outbox delivers asynchronously."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while time.monotonic() < deadline:
            if stats["ended"] >= calls and stats["calls"] == stats["ended"]:
                # All ended; give late duplicates or stragglers a moment, then re-read.
                time.sleep(min(quiet, 0.3))
                return self.stats()
            idle = stats["idle_seconds"]
            if idle is not None and idle > max(5.0, quiet * 5) and stats["calls"] > 0:
                break
            time.sleep(0.2)
            stats = self.stats()
        return stats

    def wait_for(self, kind: str, count: int, timeout: float) -> dict[str, Any]:
        """Wait until ``count`` events of type ``kind`` arrived (bounded); the stats then."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while stats["types"].get(kind, 0) < count and time.monotonic() < deadline:
            time.sleep(0.1)
            stats = self.stats()
        return stats

    def close(self) -> None:
        _stop_process(self.proc, 3.0)


@dataclass(slots=True)
class Database:
    """A temporary database for one service run: SQLite file or fresh PostgreSQL database."""

    kind: str
    url: str
    admin_url: str | None = None
    name: str | None = None

    @classmethod
    def create(cls, kind: str, workdir: Path, pg_url: str) -> Database:
        if kind == "sqlite":
            path = workdir / f"bench_{secrets.token_hex(3)}.db"
            return cls(kind, f"sqlite+aiosqlite:///{path}")
        name = f"callctl_bench_{secrets.token_hex(4)}"
        _pg_admin(pg_url, f'CREATE DATABASE "{name}"')
        base = pg_url.rsplit("/", 1)[0]
        return cls(kind, f"{base}/{name}", admin_url=pg_url, name=name)

    def drop(self) -> None:
        if self.kind == "postgres" and self.admin_url and self.name:
            with contextlib.suppress(Exception):
                _pg_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def _pg_admin(url: str, statement: str) -> None:
    import asyncio

    import asyncpg  # type: ignore[import-untyped]

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def run() -> None:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    asyncio.run(run())


def callctl_command() -> list[str]:
    script = Path(sys.executable).parent / "callctl"
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "app.cli", "serve"]


class Service:
    """``callctl serve`` on free ports, its own database, pinned to the service CPU."""

    def __init__(
        self,
        *,
        workdir: Path,
        db_kind: str,
        pg_url: str,
        cpus: Sequence[int] | None,
        webhook_url: str | None,
        rtp_pairs: int = 3000,
        env: dict[str, str] | None = None,
        start_timeout: float = 60.0,
        profile_dir: Path | None = None,
    ) -> None:
        self.http_port = free_port()
        self.sip_port = free_port()
        self.database = Database.create(db_kind, workdir, pg_url)
        self.log = workdir / f"callctl_{self.sip_port}.log"
        rtp_high = min(65535, RTP_LOW + 2 * rtp_pairs + 100)
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("CALLCTL_")
        }
        environment.update(
            {
                "CALLCTL_HTTP_HOST": "127.0.0.1",
                "CALLCTL_HTTP_PORT": str(self.http_port),
                "CALLCTL_SIP_HOST": "127.0.0.1",
                "CALLCTL_SIP_PORT": str(self.sip_port),
                "CALLCTL_SIP_TRANSPORTS": "udp",
                "CALLCTL_DATABASE_URL": self.database.url,
                "CALLCTL_WEBHOOK_ALLOW_PRIVATE": "true",
                "CALLCTL_RTP_PORTS": f"{RTP_LOW}-{rtp_high}",
                "CALLCTL_LOG_LEVEL": "WARNING",
                "CALLCTL_DRAIN_SECONDS": "3",
            }
        )
        if webhook_url:
            environment["CALLCTL_WEBHOOK_URL"] = webhook_url
        environment.update(env or {})
        self.env = environment
        with self.log.open("wb") as out:
            command = callctl_command()
            self.profile: Path | None = None
            if profile_dir is not None:
                # py-spy cannot attach to a running process in every container (ptrace
                # rules), but it can always start it: callctl runs as py-spy's child.
                profile_dir.mkdir(parents=True, exist_ok=True)
                self.profile = profile_dir / f"callctl_{self.sip_port}.txt"
                command = [
                    pyspy_path(),
                    "record",
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--nonblocking",
                    "--gil",
                    "-o",
                    str(self.profile),
                    "--",
                    *command,
                ]
            self.proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_preexec(cpus, nofile=True),
            )
        self._pid = self.proc.pid
        try:
            if profile_dir is not None:
                wait_until(self._find_child, 20.0, "py-spy did not start callctl")
            wait_until(self._ready, start_timeout, "callctl did not become ready")
        except BaseException:
            self.close()
            raise

    def _find_child(self) -> bool:
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = (task / "children").read_text().split()
                if children:
                    self._pid = int(children[0])
                    return True
        if self.proc.poll() is not None:
            raise RuntimeError(f"py-spy exited: {self.log_tail()}")
        return False

    @property
    def pid(self) -> int:
        """The callctl process (not py-spy's when profiling)."""
        return self._pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"callctl exited with {self.proc.returncode}: {self.log_tail()}")
        with contextlib.suppress(OSError):
            return http_json("GET", "127.0.0.1", self.http_port, "/readyz", timeout=1)[0] == 200
        return False

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def get(self, path: str) -> tuple[int, Any]:
        return http_json("GET", "127.0.0.1", self.http_port, path, timeout=30)

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        return http_json("POST", "127.0.0.1", self.http_port, path, body=body, timeout=30)

    def close(self) -> None:
        try:
            if self._pid != self.proc.pid:
                # Stop callctl itself; py-spy then writes its profile and exits.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=15.0)
            _stop_process(self.proc, 10.0)
        finally:
            self.database.drop()


def pyspy_path() -> str:
    found = os.environ.get("CALLCTL_BENCH_PYSPY") or shutil.which("py-spy")
    if not found:
        raise RuntimeError(
            "--profile needs py-spy on PATH (pip install py-spy) "
            "or CALLCTL_BENCH_PYSPY=/path/to/py-spy"
        )
    return found


def profile_summary(paths: Sequence[Path], top: int = 15) -> dict[str, Any]:
    """Where callctl's CPU time went, from py-spy's raw (collapsed) stacks: the share of
    samples per function on top of the stack (self), per function anywhere on the stack
    (inclusive), and per source file (self)."""
    self_time: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    per_file: dict[str, int] = {}
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                stack, _, count_text = line.rpartition(" ")
                if not stack or not count_text.isdigit():
                    continue
                count = int(count_text)
                frames = [f for f in stack.split(";") if f]
                if not frames:
                    continue
                total += count
                leaf = frames[-1]
                self_time[leaf] = self_time.get(leaf, 0) + count
                source = leaf.rsplit("(", 1)[-1].split(":", 1)[0]
                short = "/".join(source.split("/")[-3:])
                per_file[short] = per_file.get(short, 0) + count
                for frame in set(frames):
                    inclusive[frame] = inclusive.get(frame, 0) + count

    def share(table: dict[str, int]) -> list[tuple[str, float]]:
        ranked = sorted(table.items(), key=lambda item: -item[1])[:top]
        return [(name, round(100 * n / total, 1)) for name, n in ranked]

    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self_percent": share(self_time),
        "inclusive_percent": share(inclusive),
        "file_self_percent": share(per_file),
    }


def wait_until(check: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise TimeoutError(message)


# -- the rate search ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    """Default rate steps of a part: x2 from ``start`` up to ``max_rate``, then ``refine``
    bisections; ``seconds`` of load per step."""

    start: int
    max_rate: int
    seconds: float
    refine: int
    #: Lowest rate tried when ``start`` is not clean (the search then steps down).
    min_rate: int = 5

    def resolve(self, args: argparse.Namespace) -> Preset:
        """These defaults overridden by the command line."""
        return Preset(
            start=args.start_rate or self.start,
            max_rate=args.max_rate or self.max_rate,
            seconds=args.step_seconds or self.seconds,
            refine=self.refine if args.refine is None else args.refine,
            min_rate=min(self.min_rate, args.start_rate or self.min_rate),
        )


@dataclass(slots=True)
class Step:
    """One measured rate: ``clean`` means 0 failed calls (and, for callctl, 0 lost or
    out-of-order events); ``achieved`` is completed calls per second of the sending phase."""

    rate: int
    clean: bool
    achieved: float
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "clean": self.clean,
            "achieved_cps": round(self.achieved, 1),
            **self.detail,
        }


def find_max_clean(
    run_step: Callable[[int], Step],
    *,
    start: int,
    factor: float = 2.0,
    max_rate: int,
    refine: int = 2,
    min_rate: int = 5,
    log: Callable[[str], None] = print,
) -> tuple[int | None, list[Step]]:
    """Step the rate up by ``factor`` from ``start`` until a step is not clean (or
    ``max_rate``), then bisect ``refine`` times between the last clean and the first
    unclean rate. When ``start`` itself is not clean, step down by ``factor`` instead,
    to ``min_rate`` at the lowest. Returns the highest clean rate (None: none was)."""
    steps: list[Step] = []
    best: int | None = None
    worst: int | None = None
    rate = start
    while rate <= max_rate:
        step = run_step(rate)
        steps.append(step)
        log(_step_line(step))
        if not step.clean:
            worst = rate
            break
        best = rate
        rate = int(rate * factor)
    rate = int(start / factor)
    while best is None and rate >= min_rate:
        step = run_step(rate)
        steps.append(step)
        log(_step_line(step))
        if step.clean:
            best = rate
        else:
            worst = rate
            rate = int(rate / factor)
    for _ in range(refine):
        if best is None or worst is None or worst - best <= max(1, best // 20):
            break
        middle = (best + worst) // 2
        step = run_step(middle)
        steps.append(step)
        log(_step_line(step))
        if step.clean:
            best = middle
        else:
            worst = middle
    return best, steps


def _step_line(step: Step) -> str:
    mark = "clean" if step.clean else "NOT clean"
    extra = ", ".join(f"{k}={v}" for k, v in step.detail.items() if k in _STEP_KEYS)
    return f"  rate {step.rate:>6} cps: {mark:<9} achieved {step.achieved:8.1f} cps  {extra}"


_STEP_KEYS = (
    "failed",
    "shed",
    "retransmissions",
    "lost",
    "out_of_order",
    "not_ended",
    "http_errors",
    "statuses",
    "reason",
)


# -- command line and output ----------------------------------------------------------------


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few seconds in all: small rates and N; checks it works, not speed",
    )
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgres"),
        default="sqlite",
        help="callctl's database (default: a temporary SQLite file)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("CALLCTL_BENCH_PG_URL", DEFAULT_PG_URL),
        help="PostgreSQL server for --db postgres; a fresh database is "
        "created there and dropped afterwards",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the service and the load generators to separate CPUs",
    )
    parser.add_argument(
        "--step-seconds", type=float, default=None, help="seconds of load per rate step"
    )
    parser.add_argument("--start-rate", type=int, default=None, help="first rate step (cps)")
    parser.add_argument("--max-rate", type=int, default=None, help="highest rate step (cps)")
    parser.add_argument(
        "--refine", type=int, default=None, help="bisection steps after the doubling steps"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="do not write bench/results/<date>.json"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="write the JSON here instead of bench/results/<date>.json",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run callctl under py-spy (sampling, 200 Hz) and put a summary of where its "
        "CPU time went in the results (lowers the figures a little)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep logs and SIPp traces here (default: a temporary folder)",
    )


@contextlib.contextmanager
def workdir_for(args: argparse.Namespace) -> Iterator[Path]:
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        yield args.workdir
        return
    path = Path(tempfile.mkdtemp(prefix="callctl-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def environment(args: argparse.Namespace, plan: CpuPlan) -> dict[str, Any]:
    sipp_version = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["sipp", "-v"], capture_output=True, text=True, timeout=5)
        sipp_version = next(
            (ln.strip() for ln in (out.stdout + out.stderr).splitlines() if "SIPp" in ln), ""
        )
    try:
        with open("/proc/cpuinfo") as handle:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in handle if ln.startswith("model name")), ""
            )
    except OSError:
        model = ""
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "python": platform.python_version(),
        "sipp": sipp_version,
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "db": args.db,
        "quick": bool(args.quick),
        "pinning": {"service": plan.service, "load": plan.load},
    }


def results_path(args: argparse.Namespace) -> Path:
    if args.output is not None:
        return Path(args.output)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    suffix = "" if args.db == "sqlite" else f"-{args.db}"
    suffix += "-quick" if args.quick else ""
    return RESULTS / f"{stamp}{suffix}.json"


def load_limit(args: argparse.Namespace) -> dict[str, Any] | None:
    """The limit section of today's results file, for the ratios of a part run alone."""
    path = results_path(args)
    with contextlib.suppress(OSError, ValueError):
        limit = json.loads(path.read_text()).get("limit")
        return limit if isinstance(limit, dict) else None
    return None


def write_results(
    args: argparse.Namespace,
    results: dict[str, Any],
    finalize: Callable[[dict[str, Any]], None] | None = None,
) -> Path | None:
    if args.no_write:
        return None
    path = results_path(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    existing: dict[str, Any] = {}
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            existing = json.loads(path.read_text())
    # A part run alone updates its own section of the day's file and keeps the others.
    earlier = existing.get("environment")
    existing.update(results)
    if (
        isinstance(earlier, dict)
        and "environment" in results
        and earlier is not results["environment"]
    ):
        # Keep what the earlier runs of the day were (their parts may still be in the file).
        runs = earlier.pop("earlier_runs", [])
        existing["environment"] = {**results["environment"], "earlier_runs": [*runs, earlier]}
    if finalize is not None:
        finalize(existing)
    path.write_text(json.dumps(existing, indent=2, sort_keys=False) + "\n")
    return path


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    else:
        text = f"{value:,}" if isinstance(value, int) else str(value)
    return f"{text}{unit}"


def print_table(rows: Sequence[tuple[str, Any, Any, Any]], title: str) -> None:
    """Rows of (figure, callctl value, limit value, ratio)."""
    print()
    print(title)
    header = ("figure", "callctl", "limit (SIPp)", "ratio")
    cells = [header] + [
        (name, fmt(value), fmt(limit), "-" if r is None else f"{r:.3f}")
        for name, value, limit, r in rows
    ]
    widths = [max(len(str(row[i])) for row in cells) for i in range(4)]
    for index, row in enumerate(cells):
        print(
            "  "
            + "  ".join(
                str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
                for i, cell in enumerate(row)
            )
        )
        if index == 0:
            print("  " + "  ".join("-" * w for w in widths))
    print()


def log(message: str) -> None:
    print(message, flush=True)


#: Calls made on every freshly started service before its first measured step.
WARMUP_CALLS = 10


class Rig:
    """callctl plus the webhook receiver for a sequence of steps.

    The service is kept across clean steps (the database grows as it would in use) and
    started afresh after a step that was not clean, so that a backlog left by an overloaded
    step does not spill into the next one."""

    def __init__(
        self,
        args: argparse.Namespace,
        workdir: Path,
        plan: CpuPlan,
        *,
        rtp_pairs: int = 3000,
        env: dict[str, str] | None = None,
        warmup: Callable[[Service], object] | None = None,
    ) -> None:
        self.args = args
        self.warmup = warmup
        self.workdir = workdir
        self.plan = plan
        self.rtp_pairs = rtp_pairs
        self.env = env
        self.receiver = Receiver(workdir, plan.load)
        self.service: Service | None = None
        self.restarts = 0
        #: Set by a step that was not clean: the next step gets a fresh service.
        self.dirty = True
        self.profile_dir = workdir / "profiles" if getattr(args, "profile", False) else None
        self.profiles: list[Path] = []

    def fresh(self) -> Service:
        if self.service is not None:
            self.service.close()
            self.service = None
            self.restarts += 1
        self.receiver.reset()
        self.service = Service(
            workdir=self.workdir,
            db_kind=self.args.db,
            pg_url=self.args.pg_url,
            cpus=self.plan.service,
            webhook_url=self.receiver.url,
            rtp_pairs=self.rtp_pairs,
            env=self.env,
            profile_dir=self.profile_dir,
        )
        if self.service.profile is not None:
            self.profiles.append(self.service.profile)
        self.receiver.configure(getattr(self.args, "answer", "webhook"), self.service.base_url)
        if self.warmup is not None:
            # A few calls first, so that first-use costs (lazy imports, caches, pools) of a
            # fresh process do not land on the measured step.
            self.warmup(self.service)
            self.receiver.wait_drained(WARMUP_CALLS, 15.0)
            self.receiver.reset()
        return self.service

    def ready(self) -> Service:
        """The service for the next step: the same one unless the last step was not clean."""
        if not self.dirty and self.service is not None and self.service.proc.poll() is None:
            self.receiver.reset()
            return self.service
        return self.fresh()

    def close(self) -> None:
        try:
            if self.service is not None:
                self.service.close()
        finally:
            self.receiver.close()


def event_problems(stats: dict[str, Any], expected_calls: int, cause: str) -> dict[str, Any]:
    """The receiver's verdict after a run: 0 everywhere is clean."""
    return {
        "webhook_calls": stats["calls"],
        "missing_calls": max(0, expected_calls - stats["calls"]),
        "lost": stats["lost"],
        "out_of_order": stats["out_of_order"],
        "not_ended": stats["not_ended"],
        "duplicates": stats["duplicates"],
        "wrong_end_cause": sum(n for c, n in stats["end_causes"].items() if c != cause),
    }


def events_clean(problems: dict[str, Any]) -> bool:
    return all(
        problems[key] == 0
        for key in ("missing_calls", "lost", "out_of_order", "not_ended", "wrong_end_cause")
    )


Rows = list[tuple[str, Any, Any, Any]]


def part_main(
    argv: list[str],
    *,
    part: str,
    doc: str | None,
    run: Callable[[argparse.Namespace, Path, CpuPlan], dict[str, Any]],
    table: Callable[[dict[str, Any], argparse.Namespace], Rows],
    title: Callable[[argparse.Namespace], str],
    add_arguments: Sequence[Callable[[argparse.ArgumentParser], None]] = (),
    ok: Callable[[dict[str, Any]], bool] = lambda result: bool(result.get("max_clean_cps")),
) -> int:
    """`python -m bench PART`: parse the common and the part's flags, pin the CPUs, run,
    print the table, write the results file; exit 0 when ``ok(result)``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m bench {part}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common_arguments(parser)
    for add in add_arguments:
        add(parser)
    args = parser.parse_args(argv)
    plan = CpuPlan.make(not args.no_pin)
    plan.pin_self()
    with workdir_for(args) as workdir:
        result = run(args, workdir, plan)
    print_table(table(result, args), title(args))
    path = write_results(args, {"environment": environment(args, plan), part: result})
    if path:
        log(f"results: {path}")
    return 0 if ok(result) else 1
