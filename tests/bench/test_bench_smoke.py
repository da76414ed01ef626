"""The benchmark harness (bench/): its pieces, and one short end-to-end smoke run.

The smoke run is ``python -m bench all --quick``: callctl, the webhook receiver and SIPp on
loopback for a few seconds per part, at rates any machine sustains. It checks that every
part runs and produces its figures, never how fast anything is (speed is the benchmark's
business, not the test suite's). It is skipped when ``sipp`` is not installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.receiver import Recorder  # noqa: E402
from bench.sipp import (  # noqa: E402
    SippStats,
    answered_and_completed,
    completed_within,
    invite_to_answer,
    invites_received,
)

SIPP_MISSING = "sipp is not on PATH (Debian/Ubuntu package 'sip-tester')"


# -- receiver: the event checks ------------------------------------------------------------


def _event(
    call: str, seq: int, kind: str, direction: str = "inbound", cause: str | None = None
) -> bytes:
    data: dict[str, Any] = {
        "call": {"direction": direction, "end": {"cause": cause} if cause else None}
    }
    return json.dumps(
        {"id": f"evt_{call}_{seq}", "type": kind, "call_id": call, "sequence": seq, "data": data}
    ).encode()


def test_receiver_accepts_inbound_initiated_only() -> None:
    recorder = Recorder(accept=True)
    assert recorder.record(_event("a", 1, "call.initiated")) == b'{"action":"accept"}'
    assert recorder.record(_event("b", 1, "call.initiated", direction="outbound")) == b""
    assert recorder.record(_event("a", 2, "call.answered")) == b""
    assert Recorder(accept=False).record(_event("c", 1, "call.initiated")) == b""


def test_receiver_clean_calls_have_no_problems() -> None:
    recorder = Recorder(accept=True)
    for call in ("a", "b"):
        recorder.record(_event(call, 1, "call.initiated"))
        recorder.record(_event(call, 2, "call.progress"))
        recorder.record(_event(call, 3, "call.answered"))
        recorder.record(_event(call, 4, "call.ended", cause="remote_bye"))
    recorder.record(_event("a", 4, "call.ended", cause="remote_bye"))  # redelivery
    stats = recorder.stats()
    assert stats["calls"] == 2 and stats["ended"] == 2 and stats["events"] == 9
    assert stats["duplicates"] == 1
    problems = harness.event_problems(stats, 2, "remote_bye")
    assert harness.events_clean(problems), problems


def test_receiver_finds_gaps_disorder_and_missing_end() -> None:
    recorder = Recorder(accept=True)
    # gap: 2 never arrives
    recorder.record(_event("gap", 1, "call.initiated"))
    recorder.record(_event("gap", 3, "call.ended", cause="remote_bye"))
    # out of order: 3 before 2
    recorder.record(_event("ooo", 1, "call.initiated"))
    recorder.record(_event("ooo", 3, "call.ended", cause="remote_bye"))
    recorder.record(_event("ooo", 2, "call.answered"))
    # never ended
    recorder.record(_event("open", 1, "call.initiated"))
    stats = recorder.stats()
    assert stats["lost"] == 1
    assert stats["out_of_order"] == 1
    assert stats["not_ended"] == 1
    problems = harness.event_problems(stats, 4, "remote_bye")
    assert problems["missing_calls"] == 1
    assert not harness.events_clean(problems)
    assert recorder.record(b"not json") == b"" and recorder.stats()["bad_requests"] == 1


def test_receiver_wrong_end_cause_is_not_clean() -> None:
    recorder = Recorder(accept=True)
    recorder.record(_event("x", 1, "call.initiated"))
    recorder.record(_event("x", 2, "call.ended", cause="failed"))
    problems = harness.event_problems(recorder.stats(), 1, "remote_bye")
    assert problems["wrong_end_cause"] == 1 and not harness.events_clean(problems)


# -- rate search and statistics -------------------------------------------------------------


def test_find_max_clean_doubles_then_bisects() -> None:
    seen: list[int] = []

    def step(rate: int) -> harness.Step:
        seen.append(rate)
        return harness.Step(rate=rate, clean=rate <= 700, achieved=float(rate))

    best, steps = harness.find_max_clean(
        step, start=100, max_rate=10_000, refine=3, log=lambda _: None
    )
    assert seen == [100, 200, 400, 800, 600, 700, 750]
    assert best == 700
    assert [s.clean for s in steps] == [True, True, True, False, True, True, False]


def test_find_max_clean_when_nothing_is_clean() -> None:
    best, steps = harness.find_max_clean(
        lambda rate: harness.Step(rate=rate, clean=False, achieved=0.0),
        start=100,
        max_rate=1000,
        refine=2,
        log=lambda _: None,
    )
    assert best is None and [s.rate for s in steps] == [100, 50, 25, 12, 6]


def test_find_max_clean_steps_down_when_start_fails() -> None:
    best, steps = harness.find_max_clean(
        lambda rate: harness.Step(rate=rate, clean=rate <= 30, achieved=float(rate)),
        start=100,
        max_rate=1000,
        refine=2,
        log=lambda _: None,
    )
    # down: 100, 50 fail, 25 clean; then bisect 25..50: 37 fails, 31 fails
    assert [s.rate for s in steps] == [100, 50, 25, 37, 31]
    assert best == 25


def test_find_max_clean_stops_at_max_rate() -> None:
    best, steps = harness.find_max_clean(
        lambda rate: harness.Step(rate=rate, clean=True, achieved=float(rate)),
        start=100,
        max_rate=400,
        refine=2,
        log=lambda _: None,
    )
    assert best == 400 and [s.rate for s in steps] == [100, 200, 400]


def test_percentiles_and_ratio() -> None:
    values = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    got = harness.percentiles(values)
    assert got == {"count": 100, "p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert harness.percentiles([]) == {"count": 0}
    assert harness.ratio(50, 200) == 0.25
    assert harness.ratio(None, 200) is None and harness.ratio(5, 0) is None


def test_proc_readers_see_this_process() -> None:
    assert harness.rss_kib(os.getpid()) > 0
    assert harness.cpu_seconds(os.getpid()) > 0
    assert harness.rss_kib(2**22 + 12345) == 0  # no such process


def test_free_ports_differ_and_stay_below_rtp_range() -> None:
    ports = {harness.free_port() for _ in range(5)}
    assert len(ports) == 5
    assert all(10000 <= p < harness.RTP_LOW for p in ports)


# -- SIPp output parsing -------------------------------------------------------------------


def _short(lines: list[tuple[float, str, str, str, str]]) -> str:
    return "".join(
        f"2026-11-22\t00:00:00.000000\t{t:.6f}\t{d}\t{cid}\tCSeq:{cseq}\t{line}\n"
        for t, d, cid, cseq, line in lines
    )


def test_shortmsg_latencies(tmp_path: Path) -> None:
    log = tmp_path / "short.log"
    log.write_text(
        _short(
            [
                (100.000000, "S", "c1", "1 INVITE", "INVITE sip:x@h SIP/2.0"),
                (100.000100, "R", "c1", "1 INVITE", "SIP/2.0 100 Trying"),
                (100.000500, "S", "c1", "1 INVITE", "INVITE sip:x@h SIP/2.0"),  # retransmission
                (100.002000, "R", "c1", "1 INVITE", "SIP/2.0 200 OK"),
                (100.002100, "R", "c1", "1 INVITE", "SIP/2.0 200 OK"),  # retransmitted 2xx
                (100.003000, "S", "c2", "1 INVITE", "INVITE sip:x@h SIP/2.0"),
                (100.004000, "R", "c2", "2 BYE", "SIP/2.0 200 OK"),  # not the INVITE's
                (100.010000, "R", "c3", "1 INVITE", "INVITE sip:y@h SIP/2.0"),
            ]
        )
    )
    assert invite_to_answer(log) == pytest.approx([0.002])
    assert invites_received(log) == {"c3": pytest.approx(100.01)}


def test_stat_and_counts_parsing(tmp_path: Path) -> None:
    names = [
        "StartTime",
        "CurrentTime",
        "ElapsedTime(C)",
        "OutgoingCall(C)",
        "IncomingCall(C)",
        "SuccessfulCall(C)",
        "FailedCall(C)",
        "FailedMaxUDPRetrans(C)",
        "Retransmissions(C)",
        "CurrentCall",
    ]
    start = "2026-11-22\t00:00:00.000000\t1000.000000"
    rows = [
        [
            start,
            "2026-11-22\t00:00:01.000000\t1001.000000",
            "00:00:01",
            "100",
            "0",
            "90",
            "0",
            "0",
            "0",
            "10",
        ],
        [
            start,
            "2026-11-22\t00:00:02.000000\t1002.000000",
            "00:00:02",
            "200",
            "0",
            "190",
            "3",
            "3",
            "7",
            "7",
        ],
        [
            start,
            "2026-11-22\t00:00:09.000000\t1009.000000",
            "00:00:09",
            "200",
            "0",
            "197",
            "3",
            "3",
            "7",
            "0",
        ],
    ]
    stat = tmp_path / "stat.csv"
    stat.write_text("\n".join(";".join(r) + ";" for r in [names, *rows]) + "\n")
    stats = SippStats.from_csv(stat)
    assert (stats.created, stats.successful, stats.failed) == (200, 197, 3)
    assert stats.retransmissions == 7 and stats.elapsed == 9.0
    assert stats.failures == {"MaxUDPRetrans": 3}
    assert completed_within(stat, 2.0) == (190, pytest.approx(2.0))
    assert SippStats.from_csv(tmp_path / "missing.csv").successful == 0
    counts = {"0_INVITE_Sent": 10, "4_503_Recv": 2, "5_200_Recv": 8, "9_200_Recv": 7}
    assert answered_and_completed(counts) == (8, 7)


# -- the smoke run ----------------------------------------------------------------------------


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("sipp") is None, reason=SIPP_MISSING)
def test_bench_all_quick_runs_every_part(tmp_path: Path) -> None:
    if os.environ.get("CALLCTL_TEST_DATABASE_URL"):
        pytest.skip("the benchmark smoke runs once per CI run, in the SQLite pass")
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "all",
            "--quick",
            "--output",
            str(out),
            "--workdir",
            str(tmp_path / "work"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if not k.startswith("CALLCTL_")},
    )
    report = f"exit {proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    assert out.exists(), report
    results = json.loads(out.read_text())
    for part in ("limit", "inbound", "outbound", "concurrency"):
        assert "error" not in results[part], f"{part}: {results[part].get('error')}\n{report}"
    # Every part found a clean rate (a smoke, not a speed check: the quick rates are far
    # below what any machine sustains, and which one was reached is not asserted).
    limit, inbound, outbound = results["limit"], results["inbound"], results["outbound"]
    for part in (limit, inbound, outbound):
        assert isinstance(part["max_clean_cps"], int) and part["max_clean_cps"] > 0, report
    for part in (limit, inbound, outbound):
        for name in ("at_max", "at_half"):
            assert part["latency_ms"][name]["count"] > 0, report
            assert part["latency_ms"][name]["p99"] >= part["latency_ms"][name]["p50"] > 0
        assert "achieved_cps" in part["overload"]
    concurrency = results["concurrency"]
    # Calls were set up, held and measured (whether every single one succeeded is the
    # interop tests' business; the figures must be there).
    assert concurrency["established"] > 0, report
    assert concurrency["rss_kib_held"] > 0 and concurrency["idle_cpu_percent"] >= 0
    assert concurrency["window_seconds"] > 0
    assert concurrency["reference"]["established"] == concurrency["calls"]
    summary = results["summary"]
    for key in (
        "limit.max_clean_cps",
        "inbound.max_clean_cps",
        "outbound.max_clean_cps",
        "inbound.latency_ms.at_max.p99",
        "concurrency.rss_kib_per_call",
    ):
        assert key in summary
    assert summary["inbound.max_clean_cps_ratio"] == pytest.approx(
        inbound["max_clean_cps"] / limit["max_clean_cps"]
    )
    assert proc.returncode == 0, report
    assert "limit: SIPp UAC -> SIPp UAS" in proc.stdout
