"""Outbound: POST /v1/calls at a steady rate -> callctl -> SIPp UAS that answers and hangs up.

    python -m bench outbound [--quick] [--db postgres] [--step-seconds 5]

The load client (bench/loadclient.py, open loop, keep-alive pool) dials
``sip:bench@127.0.0.1:<uas port>``; the SIPp UAS (scenarios/uas_outbound.xml) answers at
once with 200 + SDP, waits for the ACK and sends BYE. The rate is stepped up x2, then
bisected.

A step is clean when every POST got 201, the UAS saw every call complete with 0 failed,
and the receiver has every call's events 1..n in order, ``call.ended`` (``remote_bye``) last.

Latency, POST -> INVITE on the wire: the load client notes the wall-clock time it wrote
each POST and reads the call's SIP Call-ID from the 201 body; the UAS's
``-trace_shortmsg`` log has the wall-clock time (microseconds) it received that INVITE.
Both clocks are this machine's, so the difference is exact up to SIPp's read loop. The
call's ``created_at`` was not used: it says when the row was made, not when the INVITE left.
The POST -> 201 time is reported beside it (``http_latency``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness, service_part
from bench.harness import CpuPlan, Preset, Rig, Step, cpu_seconds, log, percentiles, rss_kib
from bench.loadclient import LoadResult, post_calls, run_in_loop
from bench.sipp import completed_within, invites_received, kept_up, start_uas

QUICK = Preset(start=20, max_rate=20, seconds=1.0, refine=0, min_rate=20)
FULL = Preset(start=100, max_rate=12_800, seconds=5.0, refine=2)
DRAIN_TIMEOUT = 30.0


def run_step(rig: Rig, rate: int, seconds: float, *, trace: bool = False) -> Step:
    service = rig.ready()
    calls = max(1, round(rate * seconds))
    uas, uas_port = start_uas(
        workdir=rig.workdir,
        scenario_name="uas_outbound.xml",
        calls=calls,
        timeout=seconds + DRAIN_TIMEOUT + 30,
        free_port=harness.free_port,
        trace=trace,
        cpus=rig.plan.load,
    )
    cpu0, rss0 = cpu_seconds(service.pid), rss_kib(service.pid)
    load_start = time.time()
    load: LoadResult = run_in_loop(
        post_calls(
            service.base_url, to=f"sip:bench@127.0.0.1:{uas_port}", rate=rate, seconds=seconds
        )
    )
    created = load.ok()
    # The UAS exits by itself once it completed `calls` calls; fewer were dialled if some
    # POSTs failed, so wait for the ones that were, then stop it.
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while uas.running() and time.monotonic() < deadline:
        stats = uas.stats_so_far()
        if stats.successful + stats.failed >= created and stats.current == 0:
            break
        time.sleep(0.2)
    uas.wait_exit(1.0)
    uas_result = uas.wait()
    t0 = time.monotonic()
    events = rig.receiver.wait_drained(created, DRAIN_TIMEOUT)
    drain = time.monotonic() - t0
    cpu1, rss1 = cpu_seconds(service.pid), rss_kib(service.pid)
    done, window = completed_within(uas_result.stat_path, seconds, load_start)
    keeps_up = kept_up(uas_result.stat_path, seconds, calls, load_start)
    problems = harness.event_problems(events, created, "remote_bye")
    statuses = load.statuses()
    http_errors = len(load.records) - created
    clean = (
        http_errors == 0
        and keeps_up
        and uas_result.stats.successful == calls
        and uas_result.stats.failed == 0
        and harness.events_clean(problems)
    )
    detail: dict[str, Any] = {
        "calls": calls,
        "created": created,
        "statuses": statuses,
        "http_errors": http_errors,
        "shed": sum(1 for r in load.records if r.status == 503),
        "shed_with_retry_after": sum(
            1 for r in load.records if r.status == 503 and r.retry_after is not None
        ),
        "successful": uas_result.stats.successful,
        "failed": uas_result.stats.failed,
        "failures": uas_result.stats.failures,
        "retransmissions": uas_result.stats.retransmissions,
        "kept_up": keeps_up,
        **problems,
        "events_by_type": events["types"],
        "drain_seconds": round(drain, 2),
        "http_latency_ms": percentiles([r.elapsed for r in load.records if r.status]),
        "cpu_ms_per_call": round(1000 * (cpu1 - cpu0) / calls, 3),
        "rss_kib_after": rss1,
        "rss_kib_growth": rss1 - rss0,
    }
    if not clean:
        reasons = [f"HTTP {statuses}"] if http_errors else []
        if not keeps_up:
            reasons.append("did not keep up (calls completed > 1 s after the load stopped)")
        if uas_result.stats.failed or uas_result.stats.successful != calls:
            reasons.append(
                f"UAS {uas_result.stats.successful}/{calls} successful, "
                f"{uas_result.stats.failed} failed"
            )
        reasons += [
            f"{k}={v}"
            for k, v in problems.items()
            if v and k != "webhook_calls" and k != "duplicates"
        ]
        detail["reason"] = ", ".join(reasons) or "not clean"
    if trace and uas_result.short_log is not None:
        received = invites_received(uas_result.short_log)
        delays = [
            received[r.sip_call_id] - r.sent
            for r in load.records
            if r.sip_call_id is not None and r.sip_call_id in received
        ]
        detail["latency_ms"] = percentiles(delays)
        detail["latency_unmatched"] = created - len(delays)
    if service.proc.poll() is not None:
        detail["reason"] = f"callctl exited {service.proc.returncode}: {service.log_tail(500)}"
        clean = False
    rig.dirty = not clean
    return Step(rate=rate, clean=clean, achieved=done / window if window else 0.0, detail=detail)


def run(args: argparse.Namespace, workdir: Path, plan: CpuPlan) -> dict[str, Any]:
    preset = (QUICK if args.quick else FULL).resolve(args)
    seconds = preset.seconds
    log(f"outbound: POST /v1/calls -> callctl ({args.db}) -> SIPp UAS, {seconds:g} s per step")

    def warmup(service: harness.Service) -> object:
        calls = harness.WARMUP_CALLS
        uas, port = start_uas(
            workdir=workdir,
            scenario_name="uas_outbound.xml",
            calls=calls,
            timeout=30,
            free_port=harness.free_port,
            cpus=plan.load,
        )
        to = f"sip:bench@127.0.0.1:{port}"
        run_in_loop(post_calls(service.base_url, to=to, rate=calls, seconds=1.0))
        uas.wait_exit(15.0)
        return uas.wait()

    rig = Rig(args, workdir, plan, warmup=warmup)
    return service_part.measure(
        rig,
        run_step,
        preset,
        workdir,
        plan,
        {
            "latency_definition": "POST written -> INVITE received by the SIPp UAS "
            "(matched by SIP Call-ID; both wall clocks of this machine)",
        },
        detail_latencies=("http_latency_ms",),
    )


def table_rows(
    part: dict[str, Any], limits: dict[str, Any] | None
) -> list[tuple[str, Any, Any, Any]]:
    """As inbound; the latency's reference is SIPp's INVITE->200 at the same rate (the time
    the limit spends on the same SIP exchange), since SIPp has no REST side."""
    limits = limits or {}
    rows: list[tuple[str, Any, Any, Any]] = []
    best, ref = part.get("max_clean_cps"), limits.get("max_clean_cps")
    label = "max clean cps" + (
        " (not clean again)" if part.get("max_clean_confirmed") is False else ""
    )
    rows.append((label, best, ref, harness.ratio(best, ref)))
    for name in ("at_max", "at_half"):
        ours = part.get("latency_ms", {}).get(name, {})
        theirs = part.get("reference", {}).get(name, {})
        for q in ("p50", "p99"):
            at = name.removeprefix("at_")
            label = f"{q} POST->INVITE ms @{at} ({ours.get('rate', '-')} cps)"
            mine, ref = ours.get(q), theirs.get(q)
            rows.append((label, mine, ref, harness.ratio(mine, ref)))
        http = part.get("http_latency_ms", {}).get(name, {})
        rows.append((f"p99 POST->201 ms @{name.removeprefix('at_')}", http.get("p99"), None, None))
    over, over_ref = part.get("overload", {}), limits.get("overload", {})
    rows.append(
        (
            "overload 2x: achieved cps",
            over.get("achieved_cps"),
            over_ref.get("achieved_cps"),
            harness.ratio(over.get("achieved_cps"), over_ref.get("achieved_cps")),
        )
    )
    rows.append(("overload 2x: 503 problem+json", over.get("shed"), None, None))
    rows.append(("overload 2x: failed calls", over.get("failed"), over_ref.get("failed"), None))
    rows.append(("cpu ms per call @max", part.get("cpu_ms_per_call"), None, None))
    return rows


def main(argv: list[str]) -> int:
    return harness.part_main(
        argv,
        part="outbound",
        doc=__doc__,
        run=run,
        table=lambda result, args: table_rows(result, harness.load_limit(args)),
        title=lambda args: f"outbound (POST /v1/calls -> callctl -> SIPp, {args.db})",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
