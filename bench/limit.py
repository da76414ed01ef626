"""The limit: SIPp UAC -> SIPp UAS on this machine, the ceiling callctl is compared to.

    python -m bench limit [--quick] [--step-seconds 3] [--max-rate 51200]

The UAS (scenarios/uas_answer.xml) answers exactly as callctl does for an inbound call that
the webhook accepts (100, 180, 200 with SDP, then ACK and BYE/200) and sits on the CPU
callctl gets in the other parts; the UAC (scenarios/uac_call.xml, the same one that calls
callctl) sends the BYE right after the ACK. The rate is stepped up x2 from ``--start-rate``
until a step has a failed call, then bisected; then INVITE->200 latency is measured at the
highest clean rate and at half of it (with ``-trace_shortmsg``, left off while stepping
since tracing costs SIPp time), and one step runs at twice the highest clean rate to show
what overload does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench import harness
from bench.harness import CpuPlan, Preset, Step, log, percentiles
from bench.sipp import (
    SippResult,
    completed_within,
    invite_to_answer,
    kept_up,
    run_uac,
    start_uas,
)

QUICK = Preset(start=100, max_rate=100, seconds=1.0, refine=0, min_rate=100)
FULL = Preset(start=100, max_rate=102_400, seconds=3.0, refine=3)


def _sipp_pair(
    workdir: Path, plan: CpuPlan, rate: int, seconds: float, *, trace: bool
) -> tuple[SippResult, SippResult]:
    calls = max(1, round(rate * seconds))
    uas, uas_port = start_uas(
        workdir=workdir,
        scenario_name="uas_answer.xml",
        calls=calls,
        timeout=seconds + 40,
        free_port=harness.free_port,
        cpus=plan.service,
    )
    try:
        uac = run_uac(
            workdir=workdir,
            remote=("127.0.0.1", uas_port),
            rate=rate,
            calls=calls,
            free_port=harness.free_port,
            trace=trace,
            cpus=plan.load,
        )
    finally:
        # A UAS whose calls all ended exits by itself (after its 500 ms timewait).
        uas.wait_exit(3.0)
    return uac, uas.wait()


def step(workdir: Path, plan: CpuPlan, rate: int, seconds: float) -> Step:
    uac, uas = _sipp_pair(workdir, plan, rate, seconds, trace=False)
    calls = max(1, round(rate * seconds))
    done, window = completed_within(uac.stat_path, seconds)
    achieved = done / window if window else 0.0
    keeps_up = kept_up(uac.stat_path, seconds, calls)
    clean = uac.clean and keeps_up and uac.stats.successful == calls and uas.stats.failed == 0
    detail = _detail(uac, uas, calls)
    detail["kept_up"] = keeps_up
    if not clean:
        detail["reason"] = why_not_clean(uac, calls) + (
            "" if keeps_up else ", did not keep up (calls completed > 1 s after the load)"
        )
    return Step(rate=rate, clean=clean, achieved=achieved, detail=detail)


def why_not_clean(uac: SippResult, calls: int) -> str:
    reasons = []
    if uac.timed_out:
        reasons.append("SIPp run timed out")
    if uac.stats.failed:
        reasons.append(f"{uac.stats.failed} failed")
    if uac.shed:
        reasons.append(f"{uac.shed} shed (503)")
    if uac.stats.successful != calls:
        reasons.append(f"{uac.stats.successful}/{calls} successful")
    if uac.returncode not in (0, 1):
        reasons.append(f"SIPp exit {uac.returncode}")
    return ", ".join(reasons) or "peer failed calls"


def _detail(uac: SippResult, uas: SippResult, calls: int) -> dict[str, Any]:
    return {
        "calls": calls,
        "successful": uac.stats.successful,
        "failed": uac.stats.failed,
        "shed": uac.shed,
        "retransmissions": uac.stats.retransmissions + uas.stats.retransmissions,
        "uac_exit": uac.returncode,
        "failures": uac.stats.failures,
        "peer_failed": uas.stats.failed,
    }


def latency(workdir: Path, plan: CpuPlan, rate: int, seconds: float) -> dict[str, Any]:
    uac, _ = _sipp_pair(workdir, plan, rate, seconds, trace=True)
    values = invite_to_answer(uac.short_log) if uac.short_log else []
    return {"rate": rate, "clean": uac.clean, **percentiles(values)}


def reference_latency(
    workdir: Path, plan: CpuPlan, rates: dict[str, int], seconds: float
) -> dict[str, Any]:
    """SIPp UAC -> SIPp UAS INVITE->200 latency at the rates a callctl part measured at,
    so that its latencies have a ratio to the limit at the same load."""
    out = {name: latency(workdir, plan, rate, seconds) for name, rate in rates.items()}
    log(f"  reference (SIPp -> SIPp) at the same rates: {out}")
    return out


def run(args: argparse.Namespace, workdir: Path, plan: CpuPlan) -> dict[str, Any]:
    preset = (QUICK if args.quick else FULL).resolve(args)
    seconds = preset.seconds
    log(f"limit: SIPp UAC -> SIPp UAS, {seconds:g} s per step")
    best, steps = harness.find_max_clean(
        lambda rate: step(workdir, plan, rate, seconds),
        start=preset.start,
        max_rate=preset.max_rate,
        refine=preset.refine,
        min_rate=preset.min_rate,
    )
    out: dict[str, Any] = {
        "max_clean_cps": best,
        "step_seconds": seconds,
        "steps": [s.as_dict() for s in steps],
    }
    if best:
        out["latency_ms"] = {
            "at_max": latency(workdir, plan, best, seconds),
            "at_half": latency(workdir, plan, max(1, best // 2), seconds),
        }
        log(f"  latency at {best} cps: {out['latency_ms']['at_max']}")
        # The latency run at the highest clean rate repeats that step: was it clean again?
        out["max_clean_confirmed"] = out["latency_ms"]["at_max"]["clean"]
        log(f"  latency at {max(1, best // 2)} cps: {out['latency_ms']['at_half']}")
        overload = step(workdir, plan, 2 * best, seconds)
        out["overload"] = overload.as_dict()
        log(f"  overload (2x): {harness._step_line(overload)}")
    return out


def table_rows(limit: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    lat = limit.get("latency_ms", {})
    over = limit.get("overload", {})
    rows: list[tuple[str, Any, Any, Any]] = [
        ("max clean cps", None, limit.get("max_clean_cps"), None)
    ]
    for name in ("at_max", "at_half"):
        for q in ("p50", "p99"):
            rows.append(
                (
                    f"{q} INVITE->200 ms @{name.removeprefix('at_')} "
                    f"({lat.get(name, {}).get('rate', '-')} cps)",
                    None,
                    lat.get(name, {}).get(q),
                    None,
                )
            )
    rows.append(
        (
            f"overload 2x ({over.get('rate', '-')} cps): achieved cps",
            None,
            over.get("achieved_cps"),
            None,
        )
    )
    rows.append(("overload 2x: failed calls", None, over.get("failed"), None))
    return rows


def main(argv: list[str]) -> int:
    return harness.part_main(
        argv,
        part="limit",
        doc=__doc__,
        run=run,
        table=lambda result, _args: table_rows(result),
        title=lambda _args: "limit (SIPp UAC -> SIPp UAS)",
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
