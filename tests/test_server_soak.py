"""The soak benchmark (`unisono bench soak`): a short run against a real server, and its bookkeeping."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gadgets.faults import FAULTS, PlanResult, fault_plan, valid_plan
from gadgets.mrdfile import write_raw
from gadgets.soak import SoakOutcome, _check_raw_files, _schedule, run_benchmark
from unisono.commands.bench import BENCHMARKS


def test_short_soak_meets_every_goal() -> None:
    assert BENCHMARKS["soak"] == "gadgets.soak"
    r = run_benchmark(connections=len(FAULTS) + 6, concurrency=6, fault_share=0.75, timeout_s=0.3, seed=1)
    assert r["connections"] == len(FAULTS) + 6
    assert r["server_crashes"] == 0 and r["server_exit_code"] == 0
    assert (
        r["faults_injected"] == round(0.75 * r["connections"])
        and r["faults_answered"] == r["faults_injected"]
    )
    assert r["valid_with_images_pct"] == 100.0 and r["valid_connections"] > 0
    assert r["raw_complete_pct"] == 100.0 and r["raw_files_expected"] > r["valid_connections"]
    assert r["served"] == r["connections"] and r["wrong_answers"] == []
    assert r["stray_stream_files"] == 0
    assert 50 < r["peak_rss_mb"] < 4000


def test_schedule_uses_every_fault_kind_in_the_stated_share() -> None:
    s = _schedule(200, 0.3, seed=0)
    counts = Counter(s)
    assert counts["valid"] == 140 and len(s) == 200
    assert set(counts) - {"valid"} == set(FAULTS)
    assert s != _schedule(200, 0.3, seed=1)


def test_soak_bookkeeping_detects_wrong_answers_and_missing_raw_data(tmp_path: Path) -> None:
    valid, fault = valid_plan("v1", chain="passthrough"), fault_plan("truncated", "t1")
    # a valid scan answered with an error, a fault answered with nothing: both are counted wrong
    assert not SoakOutcome(0, valid, PlanResult(errors=["boom"], closed=True)).ok
    assert not SoakOutcome(1, fault, PlanResult(closed=True)).ok
    assert SoakOutcome(2, fault, PlanResult(errors=["... (truncated message)"], closed=True)).ok
    # raw files: one complete, one short, one missing
    from gadgets.faults import scan_data

    header, acqs = scan_data(measurement_id="v1")
    write_raw(tmp_path / "a.h5", header, acqs)
    header2, acqs2 = scan_data(measurement_id="t1")
    write_raw(tmp_path / "b.h5", header2, acqs2[:2])
    missing = valid_plan("v2", chain="passthrough")
    outcomes = [SoakOutcome(i, p, PlanResult()) for i, p in enumerate((valid, fault, missing))]
    raw = _check_raw_files(tmp_path, outcomes)
    assert raw["expected"] == 3 and raw["complete"] == 1
    assert any("t1 (truncated): 2 acquisitions, expected 4" in p for p in raw["problems"])
    assert any("v2 (valid): no raw file" in p for p in raw["problems"])
