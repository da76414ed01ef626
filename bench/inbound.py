"""Inbound: SIPp UAC -> callctl, answered by the webhook, BYE right after the ACK.

    python -m bench inbound [--quick] [--db postgres] [--step-seconds 5]

callctl runs as a subprocess (its own database) with ``CALLCTL_WEBHOOK_URL`` pointing at
the receiver (bench/receiver.py), which answers each inbound ``call.initiated`` with
``{"action": "accept"}``. SIPp (scenarios/uac_call.xml) sends the INVITE with an SDP offer,
ACKs the 200 and sends BYE at once. The rate is stepped up x2, then bisected.

A step is clean when SIPp saw 0 failed calls and 0 503s, and the receiver, after the
outbox drained (waited for, bounded), has every call with sequences 1..n, in order,
``call.initiated`` first and ``call.ended`` (cause ``remote_bye``) last.
INVITE->200 latency (p50/p99) comes from SIPp's ``-trace_shortmsg`` times (microseconds) in
extra runs at the highest clean rate and at half of it; one more step at twice the highest
clean rate shows overload (503s with Retry-After counted as ``shed``; admitted calls must
still complete).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench import harness, limit, service_part
from bench.harness import CpuPlan, Preset, Rig, Step, cpu_seconds, log, percentiles, rss_kib
from bench.sipp import (
    answered_and_completed,
    completed_within,
    invite_to_answer,
    kept_up,
    run_uac,
)

QUICK = Preset(start=20, max_rate=20, seconds=1.0, refine=0, min_rate=20)
FULL = Preset(start=100, max_rate=12_800, seconds=5.0, refine=2)
#: Seconds the outbox may take to deliver every event after the load stopped.
DRAIN_TIMEOUT = 30.0


def run_step(rig: Rig, rate: int, seconds: float, *, trace: bool = False) -> Step:
    service = rig.ready()
    calls = max(1, round(rate * seconds))
    cpu0, rss0 = cpu_seconds(service.pid), rss_kib(service.pid)
    uac = run_uac(
        workdir=rig.workdir,
        remote=("127.0.0.1", service.sip_port),
        rate=rate,
        calls=calls,
        free_port=harness.free_port,
        trace=trace,
        cpus=rig.plan.load,
    )
    answered, completed = answered_and_completed(uac.counts)
    t0 = time.monotonic()
    stats = rig.receiver.wait_drained(answered, DRAIN_TIMEOUT)
    drain = time.monotonic() - t0
    cpu1, rss1 = cpu_seconds(service.pid), rss_kib(service.pid)
    done, window = completed_within(uac.stat_path, seconds)
    problems = harness.event_problems(stats, answered, "remote_bye")
    keeps_up = kept_up(uac.stat_path, seconds, calls)
    clean = (
        uac.clean
        and keeps_up
        and uac.stats.successful == calls
        and completed == calls
        and harness.events_clean(problems)
    )
    detail: dict[str, Any] = {
        "calls": calls,
        "successful": uac.stats.successful,
        "failed": uac.stats.failed,
        "failures": uac.stats.failures,
        "shed": uac.shed,
        "answered": answered,
        "completed": completed,
        "retransmissions": uac.stats.retransmissions,
        "kept_up": keeps_up,
        **problems,
        "events_by_type": stats["types"],
        "rest_accepts": stats.get("rest_accepts"),
        "drain_seconds": round(drain, 2),
        "cpu_ms_per_call": round(1000 * (cpu1 - cpu0) / calls, 3),
        "rss_kib_after": rss1,
        "rss_kib_growth": rss1 - rss0,
    }
    if not clean:
        reasons = [limit.why_not_clean(uac, calls)] if not uac.clean else []
        if not keeps_up:
            reasons.append("did not keep up (calls completed > 1 s after the load stopped)")
        reasons += [
            f"{k}={v}"
            for k, v in problems.items()
            if v and k != "webhook_calls" and k != "duplicates"
        ]
        detail["reason"] = ", ".join(r for r in reasons if r) or "not every call completed"
    if trace and uac.short_log is not None:
        detail["latency_ms"] = percentiles(invite_to_answer(uac.short_log))
    if service.proc.poll() is not None:
        detail["reason"] = f"callctl exited {service.proc.returncode}: {service.log_tail(500)}"
        clean = False
    rig.dirty = not clean
    return Step(rate=rate, clean=clean, achieved=done / window if window else 0.0, detail=detail)


def run(args: argparse.Namespace, workdir: Path, plan: CpuPlan) -> dict[str, Any]:
    preset = (QUICK if args.quick else FULL).resolve(args)
    seconds = preset.seconds
    answer = getattr(args, "answer", "webhook")
    log(f"inbound: SIPp UAC -> callctl ({args.db}), {answer} accept, {seconds:g} s per step")

    def warmup(service: harness.Service) -> object:
        return run_uac(
            workdir=workdir,
            remote=("127.0.0.1", service.sip_port),
            rate=harness.WARMUP_CALLS,
            calls=harness.WARMUP_CALLS,
            free_port=harness.free_port,
            cpus=plan.load,
        )

    rig = Rig(args, workdir, plan, warmup=warmup)
    return service_part.measure(
        rig,
        run_step,
        preset,
        workdir,
        plan,
        {"answer": answer},
        overload_note=lambda step: (
            f" answered={step.detail['answered']} completed={step.detail['completed']}"
        ),
    )


def table_rows(
    part: dict[str, Any], limits: dict[str, Any] | None
) -> list[tuple[str, Any, Any, Any]]:
    """Figures with the limit beside them: the limit's max clean cps, and SIPp -> SIPp
    measured at the same rates for the latencies."""
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
            label = f"{q} INVITE->200 ms @{at} ({ours.get('rate', '-')} cps)"
            mine, ref = ours.get(q), theirs.get(q)
            rows.append((label, mine, ref, harness.ratio(mine, ref)))
    over, over_ref = part.get("overload", {}), limits.get("overload", {})
    rows.append(
        (
            "overload 2x: achieved cps",
            over.get("achieved_cps"),
            over_ref.get("achieved_cps"),
            harness.ratio(over.get("achieved_cps"), over_ref.get("achieved_cps")),
        )
    )
    rows.append(("overload 2x: 503 shed", over.get("shed"), over_ref.get("shed"), None))
    rows.append(("overload 2x: failed", over.get("failed"), over_ref.get("failed"), None))
    rows.append(("cpu ms per call @max", part.get("cpu_ms_per_call"), None, None))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--answer",
        choices=("webhook", "rest"),
        default="webhook",
        help="how the receiver accepts inbound calls: in the call.initiated webhook's "
        "response (default) or with POST /v1/calls/{id}/accept",
    )


def main(argv: list[str]) -> int:
    return harness.part_main(
        argv,
        part="inbound",
        doc=__doc__,
        run=run,
        table=lambda result, args: table_rows(result, harness.load_limit(args)),
        title=lambda args: f"inbound (SIPp -> callctl, {args.db})",
        add_arguments=(add_arguments,),
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
