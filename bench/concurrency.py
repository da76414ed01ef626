"""Concurrency: N established calls held for T seconds; RSS per call and CPU while idle.

    python -m bench concurrency [--calls 10000] [--hold 30] [--ramp-rate 500] [--quick]

SIPp (scenarios/uac_call.xml with ``-l N``, ``<pause/>`` = ``-d``) sets up N inbound calls
to callctl at ``--ramp-rate`` per second (the receiver accepts each through the webhook),
holds every call past the measuring window, then sends the BYEs. callctl's process is read
through /proc: VmRSS before the ramp (after a few warm-up calls) and while all N calls
are established, and utime+stime over T seconds of the hold (no signalling then: CPU
while idle, in % of one core). RSS per call = (RSS held - RSS before) / N.

The limit beside it: a SIPp UAS (scenarios/uas_answer.xml) holding the same N calls,
measured the same way.

Note: callctl binds an RTP and an RTCP socket per call, so N calls need 2N descriptors and
2N ports (the harness raises RLIMIT_NOFILE to 65536 where it may, with CAP_SYS_RESOURCE,
else the soft limit to the hard one, and widens CALLCTL_RTP_PORTS to 2N + 100); with a hard
limit of 20000 (``ulimit -Hn``) and without that capability, 10000 calls cannot all get
media ports and the excess is refused (503) or fails.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness, inbound, limit
from bench.harness import CpuPlan, Rig, cpu_seconds, hwm_kib, log, rss_kib
from bench.sipp import (
    SippProcess,
    answered_and_completed,
    run_uac,
    start_uac,
    start_uas,
)

#: (calls, hold seconds, ramp cps)
QUICK = (25, 2.0, 10)
FULL = (10_000, 30.0, 500)
#: Seconds the calls stay up beyond ramp + hold, so the window never meets the BYEs.
MARGIN = 10.0
#: The ramp may take this many times its nominal length (N / rate) before the window
#: would meet the first BYEs (``ended_during_window`` in the results says if it did).
RAMP_SLACK = 1.3


def _margin(hold: float) -> float:
    return min(MARGIN, max(2.0, hold))


def _wait_answered(uac: SippProcess, calls: int, timeout: float) -> tuple[int, float]:
    """Wait until SIPp saw ``calls`` 200s to its INVITEs (or gave up); (answered, seconds)."""
    start = time.monotonic()
    answered = 0
    # SIPp writes its counts once a second (-fd 1): give it a few rows at least.
    timeout = max(timeout, 3.0)
    while time.monotonic() - start < timeout and uac.running():
        answered, _ = answered_and_completed(uac.counts_so_far())
        stats = uac.stats_so_far()
        if answered >= calls or answered + stats.failed >= calls:
            break
        time.sleep(0.5)
    return answered, time.monotonic() - start


def _hold_window(pid: int, hold: float) -> dict[str, Any]:
    rss_start, cpu0, t0 = rss_kib(pid), cpu_seconds(pid), time.monotonic()
    time.sleep(hold)
    rss_end, cpu1, t1 = rss_kib(pid), cpu_seconds(pid), time.monotonic()
    return {
        "rss_kib_held": max(rss_start, rss_end),
        "idle_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 3),
        "window_seconds": round(t1 - t0, 2),
    }


def measure_callctl(
    args: argparse.Namespace, workdir: Path, plan: CpuPlan, calls: int, hold: float, ramp: int
) -> dict[str, Any]:
    rig = Rig(args, workdir, plan, rtp_pairs=calls + 50)
    try:
        service = rig.fresh()
        # Warm-up: a few calls so that first-use costs (imports, caches, pools) are paid.
        warm = run_uac(
            workdir=workdir,
            remote=("127.0.0.1", service.sip_port),
            rate=10,
            calls=10,
            free_port=harness.free_port,
            cpus=plan.load,
        )
        rig.receiver.wait_drained(10, 10.0)
        if warm.stats.successful == 0:
            return {
                "calls": calls,
                "established": 0,
                "clean": False,
                "warmup_ok": False,
                "reason": "none of the 10 warm-up calls completed: "
                + limit.why_not_clean(warm, 10),
            }
        rig.receiver.reset()
        time.sleep(0.5)
        rss_before = rss_kib(service.pid)
        ramp_seconds = calls / ramp
        # Each call is held from its own ACK: the first one ends after hold_ms, so the
        # window (after the ramp) fits in unless the ramp is slower than RAMP_SLACK allows.
        hold_ms = int(1000 * (RAMP_SLACK * ramp_seconds + hold + _margin(hold)))
        uac = start_uac(
            workdir=workdir,
            remote=("127.0.0.1", service.sip_port),
            rate=ramp,
            calls=calls,
            limit=calls,
            hold_ms=hold_ms,
            free_port=harness.free_port,
            cpus=plan.load,
        )
        cpu_ramp0 = cpu_seconds(service.pid)
        answered, took = _wait_answered(uac, calls, RAMP_SLACK * ramp_seconds + _margin(hold) / 2)
        cpu_ramp = cpu_seconds(service.pid) - cpu_ramp0
        if answered == 0:
            uac.stop()
            failed = uac.wait()
            return {
                "calls": calls,
                "established": 0,
                "clean": False,
                "warmup_ok": warm.clean,
                "failed": failed.stats.failed,
                "failures": failed.stats.failures,
                "reason": "no call was established"
                + (
                    ""
                    if service.proc.poll() is None
                    else f"; callctl exited: {service.log_tail(500)}"
                ),
            }
        # Let the outbox deliver the answered events, so that the window is really idle.
        rig.receiver.wait_for("call.answered", answered, 10.0)
        time.sleep(0.5)
        window = _hold_window(service.pid, hold)
        during = uac.stats_so_far()
        result = uac.wait()
        _, completed = answered_and_completed(result.counts)
        events = rig.receiver.wait_drained(answered, 60.0)
        out = {
            "calls": calls,
            "hold_seconds": hold,
            "ramp_cps": ramp,
            "warmup_ok": warm.clean,
            "established": answered,
            "ramp_seconds": round(took, 2),
            "ramp_cpu_ms_per_call": round(1000 * cpu_ramp / max(1, answered), 3),
            "rss_kib_before": rss_before,
            **window,
            "rss_kib_per_call": round((window["rss_kib_held"] - rss_before) / max(1, answered), 2),
            "rss_kib_peak": hwm_kib(service.pid),
            "rss_kib_after": rss_kib(service.pid),
            # Calls that ended before the window closed (0: the window saw all N held).
            "ended_during_window": during.successful,
            "rest_accepts": events.get("rest_accepts"),
            "completed": completed,
            "failed": result.stats.failed,
            "failures": result.stats.failures,
            "shed": result.shed,
            **harness.event_problems(events, answered, "remote_bye"),
            "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        }
        out["clean"] = (
            answered == calls
            and result.clean
            and completed == calls
            and harness.events_clean(harness.event_problems(events, answered, "remote_bye"))
        )
        return out
    finally:
        rig.close()


def measure_reference(workdir: Path, plan: CpuPlan, calls: int, hold: float) -> dict[str, Any]:
    """A SIPp UAS holding the same N calls (fast ramp: SIPp is not the subject)."""
    ramp = 2000
    ramp_seconds = calls / ramp
    hold_ms = int(1000 * (RAMP_SLACK * ramp_seconds + hold + _margin(hold)))
    uas, port = start_uas(
        workdir=workdir,
        scenario_name="uas_answer.xml",
        calls=calls,
        timeout=hold_ms / 1000 + 60,
        free_port=harness.free_port,
        cpus=plan.service,
    )
    try:
        time.sleep(0.5)
        rss_before = rss_kib(uas.pid)
        uac = start_uac(
            workdir=workdir,
            remote=("127.0.0.1", port),
            rate=ramp,
            calls=calls,
            limit=calls,
            hold_ms=hold_ms,
            free_port=harness.free_port,
            cpus=plan.load,
        )
        answered, _ = _wait_answered(uac, calls, RAMP_SLACK * ramp_seconds + _margin(hold) / 2)
        time.sleep(1.0)
        window = _hold_window(uas.pid, hold)
        result = uac.wait()
    finally:
        uas.wait_exit(5.0)
    return {
        "calls": calls,
        "established": answered,
        "rss_kib_before": rss_before,
        **window,
        "rss_kib_per_call": round((window["rss_kib_held"] - rss_before) / max(1, answered), 2),
        "failed": result.stats.failed,
    }


def run(args: argparse.Namespace, workdir: Path, plan: CpuPlan) -> dict[str, Any]:
    preset = QUICK if args.quick else FULL
    calls: int = args.calls or preset[0]
    hold: float = args.hold or preset[1]
    ramp: int = args.ramp_rate or preset[2]
    limit = harness.raise_nofile()
    if 2 * calls + 200 > limit:
        log(
            f"  warning: {calls} calls need ~{2 * calls + 200} file descriptors for RTP/RTCP "
            f"sockets; the limit here is {limit} (raising the hard limit needs CAP_SYS_RESOURCE)"
        )
    log(f"concurrency: {calls} calls ({args.db}) held {hold:g} s, ramp {ramp} cps")
    out = measure_callctl(args, workdir, plan, calls, hold, ramp)
    log(f"  callctl: {out}")
    out["reference"] = measure_reference(workdir, plan, calls, hold)
    log(f"  reference (SIPp UAS): {out['reference']}")
    return out


def table_rows(part: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    ref = part.get("reference", {})
    rows: list[tuple[str, Any, Any, Any]] = [
        (
            "calls established",
            part.get("established"),
            ref.get("established"),
            harness.ratio(part.get("established"), ref.get("established")),
        ),
    ]
    for key, label in (
        ("rss_kib_per_call", "RSS KiB per call"),
        ("rss_kib_held", "RSS KiB with N calls"),
        ("idle_cpu_percent", "CPU % (one core) while held"),
    ):
        mine, theirs = part.get(key), ref.get(key)
        rows.append((label, mine, theirs, harness.ratio(mine, theirs)))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=None, help="N calls (default 10000)")
    parser.add_argument("--hold", type=float, default=None, help="T seconds held (default 30)")
    parser.add_argument(
        "--ramp-rate",
        type=int,
        default=None,
        help="calls per second while setting up (default 500)",
    )


def main(argv: list[str]) -> int:
    return harness.part_main(
        argv,
        part="concurrency",
        doc=__doc__,
        run=run,
        table=lambda result, _args: table_rows(result),
        title=lambda args: f"concurrency ({args.db})",
        add_arguments=(add_arguments, inbound.add_arguments),
        ok=lambda result: bool(result.get("clean")),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
