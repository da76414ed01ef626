"""What the inbound and outbound parts do alike once their rig is up: the rate search, the
latency runs at the highest clean rate and at half of it, one overload step at twice that
rate, the SIPp -> SIPp reference at the same rates, and the CPU per call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import harness, limit
from bench.harness import CpuPlan, Preset, Rig, Step, log

RunStep = Callable[..., Step]


def measure(
    rig: Rig,
    run_step: RunStep,
    preset: Preset,
    workdir: Path,
    plan: CpuPlan,
    out: dict[str, Any],
    *,
    detail_latencies: tuple[str, ...] = (),
    overload_note: Callable[[Step], str] = lambda _step: "",
) -> dict[str, Any]:
    """Fill ``out`` (which already names the part's own settings) and return it.

    ``detail_latencies``: further latency figures of a step's detail to keep per rate
    (outbound: ``http_latency_ms``). The rig is closed before returning.
    """
    seconds = preset.seconds
    try:
        best, steps = harness.find_max_clean(
            lambda rate: run_step(rig, rate, seconds),
            start=preset.start,
            max_rate=preset.max_rate,
            refine=preset.refine,
            min_rate=preset.min_rate,
        )
        out["max_clean_cps"] = best
        out["step_seconds"] = seconds
        out["steps"] = [s.as_dict() for s in steps]
        if best:
            out["latency_ms"] = {}
            for key in detail_latencies:
                out[key] = {}
            for name, rate in (("at_max", best), ("at_half", max(1, best // 2))):
                measured = run_step(rig, rate, seconds, trace=True)
                out["latency_ms"][name] = {
                    "rate": rate,
                    "clean": measured.clean,
                    **measured.detail.get("latency_ms", {}),
                }
                for key in detail_latencies:
                    out[key][name] = measured.detail[key]
                log(f"  latency at {rate} cps: {out['latency_ms'][name]}")
            # The latency run at the highest clean rate repeats that step: was it clean again?
            out["max_clean_confirmed"] = out["latency_ms"]["at_max"]["clean"]
            overload = run_step(rig, 2 * best, seconds)
            out["overload"] = overload.as_dict()
            log(f"  overload (2x): {harness._step_line(overload)}{overload_note(overload)}")
            out["reference"] = limit.reference_latency(
                workdir, plan, {name: v["rate"] for name, v in out["latency_ms"].items()}, seconds
            )
            clean_steps = [s for s in steps if s.clean and s.rate == best]
            if clean_steps:
                out["cpu_ms_per_call"] = clean_steps[-1].detail["cpu_ms_per_call"]
        out["service_restarts"] = rig.restarts
    finally:
        rig.close()
    if rig.profiles:
        out["profile"] = harness.profile_summary(rig.profiles)
    return out
