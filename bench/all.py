"""Every benchmark in one run: limit, inbound, outbound, concurrency.

    python -m bench all                 # ~10 minutes on a 2-core machine, SQLite
    python -m bench all --db postgres   # the same on PostgreSQL (a fresh database)
    python -m bench all --quick         # a few seconds per part: checks it works (CI smoke)

Starts everything on loopback, stops by itself, prints one table with each callctl figure
beside the limit (SIPp -> SIPp on this machine) and their ratio, and writes
bench/results/<date>[-postgres][-quick].json. A part that fails is recorded with its error
and the others still run.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench import concurrency, harness, inbound, limit, outbound
from bench.harness import CpuPlan, log

PARTS = ("limit", "inbound", "outbound", "concurrency")


def run(args: argparse.Namespace, workdir: Path, plan: CpuPlan) -> dict[str, Any]:
    results: dict[str, Any] = {"environment": harness.environment(args, plan)}
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    timings: dict[str, float] = {}
    for name in PARTS:
        if name not in wanted:
            continue
        started = time.monotonic()
        try:
            if name == "limit":
                results["limit"] = limit.run(args, workdir, plan)
            elif name == "inbound":
                results["inbound"] = inbound.run(args, workdir, plan)
            elif name == "outbound":
                results["outbound"] = outbound.run(args, workdir, plan)
            else:
                if args.ramp_rate is None and not args.quick:
                    best = (results.get("inbound") or {}).get("max_clean_cps")
                    # Ramp at half the clean inbound rate: setting up is not what is measured.
                    args.ramp_rate = max(20, min(500, (best or 100) // 2))
                results["concurrency"] = concurrency.run(args, workdir, plan)
        except Exception as exc:  # one part failing must not lose the others
            log(f"{name}: FAILED: {exc!r}")
            results[name] = {"error": repr(exc), "traceback": traceback.format_exc()[-3000:]}
        timings[name] = round(time.monotonic() - started, 1)
    results["environment"]["seconds_per_part"] = timings
    results["summary"] = summary(results)
    return results


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures, flat, each with its ratio to the limit."""
    lim = results.get("limit") or {}
    ref_cps = lim.get("max_clean_cps")
    out: dict[str, Any] = {"limit.max_clean_cps": ref_cps}
    for part in ("inbound", "outbound"):
        section = results.get(part) or {}
        best = section.get("max_clean_cps")
        out[f"{part}.max_clean_cps"] = best
        out[f"{part}.max_clean_cps_ratio"] = harness.ratio(best, ref_cps)
        out[f"{part}.max_clean_confirmed"] = section.get("max_clean_confirmed")
        for name in ("at_max", "at_half"):
            ours = (section.get("latency_ms") or {}).get(name) or {}
            theirs = (section.get("reference") or {}).get(name) or {}
            for q in ("p50", "p99"):
                out[f"{part}.latency_ms.{name}.{q}"] = ours.get(q)
                out[f"{part}.latency_ms.{name}.{q}_ratio"] = harness.ratio(
                    ours.get(q), theirs.get(q)
                )
    conc = results.get("concurrency") or {}
    ref = conc.get("reference") or {}
    for key in ("established", "rss_kib_held", "rss_kib_per_call", "idle_cpu_percent"):
        out[f"concurrency.{key}"] = conc.get(key)
        out[f"concurrency.{key}_ratio"] = harness.ratio(conc.get(key), ref.get(key))
    return out


def print_all(results: dict[str, Any]) -> None:
    lim = results.get("limit") or {}
    if "error" not in lim and lim:
        harness.print_table(limit.table_rows(lim), "limit: SIPp UAC -> SIPp UAS")
    for name, module in (("inbound", inbound), ("outbound", outbound)):
        section = results.get(name) or {}
        if section and "error" not in section:
            harness.print_table(module.table_rows(section, lim), name)
        elif section:
            print(f"\n{name}: {section['error']}")
    conc = results.get("concurrency") or {}
    if conc and "error" not in conc:
        harness.print_table(concurrency.table_rows(conc), "concurrency")
    elif conc:
        print(f"\nconcurrency: {conc['error']}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench all",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    harness.common_arguments(parser)
    concurrency.add_arguments(parser)
    inbound.add_arguments(parser)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated parts to run (default: all four)"
    )
    args = parser.parse_args(argv)
    plan = CpuPlan.make(not args.no_pin)
    plan.pin_self()
    with harness.workdir_for(args) as workdir:
        results = run(args, workdir, plan)
    print_all(results)
    # Parts run with --parts update their sections of the day's file; the summary is made
    # again from everything in it.
    path = harness.write_results(
        args, results, finalize=lambda merged: merged.update(summary=summary(merged))
    )
    if path:
        log(f"results: {path}")
    failed = [name for name in PARTS if "error" in (results.get(name) or {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
