"""The post-rollout report, built from real telemetry windows: content, plots, escaping, files."""

from __future__ import annotations

import io
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from matplotlib import image as mpimg

from rollout.report import MAX_POINTS, Report, ReportInput, _resample, build_report
from serving.segments import ALL
from serving.telemetry import Window

T0 = 1_700_000_000.0
OWNER = "ml-platform@example.com"
CONDITION = "p95 latency +10% or error rate above 1% in any tier"
HOSTILE = "<script>alert('x')</script> & | pipes"


def windows_for(
    stages: list[tuple[str, int]], *, gold_slowdown: float = 1.0, seed: int = 0, endpoint: bool = False
):
    """One-second windows per stage: stable and candidate (and shadow in the shadow stage) per tier."""
    rng = random.Random(seed)
    out, t = [], T0
    for stage, seconds in stages:
        for _ in range(seconds):
            w = Window(start=t, end=t + 1.0)
            for _ in range(30):
                tier = rng.choice(["free", "pro", "gold"])
                arm = "stable" if stage == "shadow" or rng.random() < 0.7 else "candidate"
                latency = rng.lognormvariate(-4, 0.4)
                status = "error" if rng.random() < 0.01 else "ok"
                if arm == "candidate" and tier == "gold":
                    latency *= gold_slowdown
                for segment in (ALL, ("tier", tier), *([("endpoint", "/predict")] if endpoint else [])):
                    w.arm(arm, segment).record(status, latency)
                if stage == "shadow":
                    w.arm("shadow").record("ok", latency * 1.05)
            out.append((stage, w))
            t += 1.0
    return out


def gate(name: str, segment: Any, verdict: str, reason: str, s: float, c: float) -> dict[str, Any]:
    side = {"n": 1234, "lower": None, "upper": None}
    return {
        "gate": name,
        "segment": segment,
        "verdict": verdict,
        "evidence": {
            "stable": {**side, "estimate": s, "lower": s * 0.9, "upper": s * 1.1},
            "candidate": {**side, "estimate": c, "lower": c * 0.9, "upper": c * 1.1},
            "rule": "candidate p95 ≤ stable p95 × 1.10",
            "reason": reason,
        },
    }


def policy(impact: str = "low") -> dict[str, Any]:
    return {
        "owner": OWNER,
        "rollback_condition": CONDITION,
        "impact": impact,
        "change": "minor",
        "stages": [],
    }


def state(stage: str, weight: float) -> dict[str, Any]:
    versions = {"stable": "fraud-v1", "candidate": "fraud-v2"}
    return {
        "stage": stage,
        "candidate_weight": weight,
        "shadow_percent": 0,
        "versions": versions,
        "rollout_id": "r7",
    }


def event(ts: float, kind: str, frm: str, to: str, weight: float, reason: str) -> dict[str, Any]:
    share = {"weight": weight, "shadow_percent": 0}
    return {
        "ts": T0 + ts,
        "kind": kind,
        "from": frm,
        "to": to,
        **share,
        "actor": "controller",
        "reason": reason,
    }


def promoted() -> ReportInput:
    events = [
        event(0, "start", "", "shadow", 0, "deployed"),
        event(20, "promote", "shadow", "1%", 1, "all gates PASS after 20 s"),
        event(40, "promote", "1%", "50%", 50, "all gates PASS after 20 s"),
        event(60, "promoted", "50%", "promoted", 100, "all gates PASS at 50%"),
    ]
    gates = [gate("latency_p95_ms", "all", "PASS", "within tolerance", 31.2, 30.9)]
    windows = windows_for([("shadow", 20), ("1%", 20), ("50%", 20)])
    return ReportInput("fraud", "fraud/r7", policy(), state("promoted", 100), events, windows, gates, [])


def rolled_back() -> ReportInput:
    events = [
        event(0, "start", "", "5%", 5, "deployed"),
        event(30, "promote", "5%", "25%", 25, "all gates PASS"),
        event(45, "rollback", "25%", "rolled_back", 0, f"latency_p95_ms FAIL in tier=gold {HOSTILE}"),
    ]
    gates = [
        gate("error_rate", ["all", "all"], "PASS", "no evidence of violation", 0.01, 0.011),
        gate("latency_p95_ms", ["tier", "gold"], "FAIL", "candidate 2.1× slower", 30.0, 63.2),
        gate("human_review_score", "all", "NODATA", "no feedback yet", 0.9, 0.9),
    ]
    windows = windows_for([("5%", 30), ("25%", 15)], gold_slowdown=2.0, seed=1)
    return ReportInput(
        "fraud", "fraud/r8", policy("high"), state("rolled_back", 0), events, windows, gates, ["tier=gold"]
    )


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(io.BytesIO(data), format="png")
    return pixels.shape[1], pixels.shape[0]


def test_promoted_report_has_owner_condition_versions_and_every_event():
    data = promoted()
    report = build_report(data)
    md = report.markdown
    assert md.startswith("# fraud: fraud-v1 → fraud-v2: promoted")
    for text in (OWNER, CONDITION, "r7", "latency_p95_ms", "PASS", "31.2 ms [28.1 ms, 34.3 ms] (n=1,234)"):
        assert text in md and text.replace("&", "&amp;") in report.html
    timeline = md.split("## Decision timeline")[1]
    for e in data.events:
        assert e["reason"] in timeline and f"{e['from'] or '—'} → {e['to']}" in timeline
    assert "0 h" not in md and "1 min 0 s" in md  # the 60 s rollout's duration, for humans
    assert "None: the candidate was not worse" in md
    assert "Awaiting review" not in md
    assert "all of stable's answers since the rollout started (baseline: all)" in md


def test_the_report_says_when_the_candidate_was_compared_with_a_time_matched_sample():
    data = promoted()
    matched = build_report(replace(data, policy={**data.policy, "baseline": "matched"})).markdown
    assert "stable sampled at the candidate's pace (comparative gates; baseline: matched)" in matched


def test_rolled_back_report_puts_the_failing_gate_and_segment_first():
    report = build_report(rolled_back())
    md = report.markdown
    gate_rows = [line for line in md.split("## Gate evidence")[1].split("##")[0].splitlines() if "|" in line]
    assert "latency_p95_ms | tier=gold | FAIL" in gate_rows[2]  # header, rule, then the FAIL
    assert gate_rows[3].count("NODATA") == 1 and "PASS" in gate_rows[4]
    assert "1.00% [0.90%, 1.10%]" in md  # a rate gate reads as percentages
    worst = md.split("## Worst segments")[1].split("##")[0]
    assert "tier=gold" in worst and "latency_p95_ms" in worst
    p95 = re.findall(r"(\d+\.\d) ms", worst)
    assert float(p95[1]) > 1.5 * float(p95[0])  # candidate's p95 in gold, from the real windows, vs stable's
    assert "rolled_back" in md.splitlines()[0]


def test_a_global_fail_no_segment_explains_lists_the_segments_largest_p95_ratio_first():
    data = rolled_back()
    gates = [gate("latency_p95_ms", "all", "FAIL", "candidate p95 above 1.5x stable's", 20.0, 31.0)]
    # one endpoint holds every request: listing it would say nothing of where
    windows = windows_for([("5%", 30), ("25%", 15)], gold_slowdown=2.0, seed=1, endpoint=True)
    md = build_report(replace(data, gates=gates, worse=[], windows=windows)).markdown
    worst = md.split("## Worst segments")[1].split("##")[0]
    assert "None: the candidate was not worse" not in worst
    assert "failed globally (latency_p95_ms)" in worst and "not tested" in worst
    rows = [line for line in worst.splitlines() if line.startswith("| tier=")]
    assert len(rows) == 3 and rows[0].startswith("| tier=gold |")  # the 2x slower tier leads
    assert "endpoint=/predict" not in worst


def test_hostile_strings_are_escaped_in_html_and_markdown():
    report = build_report(rolled_back())
    assert "<script>" not in report.html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; | pipes" in report.html
    assert "<script>" not in report.markdown and "\\| pipes" in report.markdown


def test_awaiting_review_is_said_at_the_top():
    data = promoted()
    review = {**state("awaiting_review", 100), "outcome": "promoted"}
    data = ReportInput(**{**data.__dict__, "policy": policy("high"), "state": review})
    md = build_report(data).markdown
    assert md.startswith("# fraud: fraud-v1 → fraud-v2: promoted (awaiting review)")
    assert "Awaiting review: a high-impact rollout stays here until someone acknowledges" in md.split("##")[0]


@pytest.mark.parametrize("make", [promoted, rolled_back])
def test_plots_are_real_pngs(make):
    report = build_report(make())
    assert set(report.images) == {"latency.png", "errors.png"}
    for name, data in report.images.items():
        width, height = png_size(data)
        assert width >= 800 and height >= 300, name
        assert f"data:image/png;base64,{data[:30].hex()}" not in report.html  # sanity: base64, not hex
    assert report.html.count("data:image/png;base64,iVBORw0KGgo") == 2
    assert "![Latency p50 and p95 per arm over time](latency.png)" in report.markdown


def test_empty_report_still_renders():
    data = ReportInput("fraud", "k", {}, {}, [], [], [], [])
    report = build_report(data)
    assert "no data" in report.markdown and "No events were recorded." in report.markdown
    assert "No gate results were recorded." in report.markdown
    for png in report.images.values():
        png_size(png)


def test_windows_with_only_stable_or_no_requests_render():
    only_stable = windows_for([("shadow", 5)])
    for _, w in only_stable:
        w.arms = {key: stats for key, stats in w.arms.items() if key[0] == "stable"}
    empty = [("1%", Window(start=T0 + 10, end=T0 + 11))]
    data = ReportInput("fraud", "k", policy(), state("1%", 1), [], only_stable + empty, [], ["tier=gold"])
    report = build_report(data)
    assert "| stable |" in report.markdown
    assert "| candidate |" not in report.markdown  # no candidate traffic: no row, no line, and no crash
    assert re.search(r"\| tier=gold \| \d+ / 0 \| [\d.]+ ms \| — \|", report.markdown)
    for png in report.images.values():
        png_size(png)


def test_many_windows_are_resampled_exactly():
    windows = windows_for([("25%", 1000)])
    buckets = _resample(windows)
    assert len(buckets) <= MAX_POINTS
    whole, merged = Window(), Window()
    for _, w in windows:
        whole.merge(w)
    for b in buckets:
        merged.merge(b)
    assert merged.arms.keys() == whole.arms.keys()
    for key, stats in whole.arms.items():  # counts and histograms exactly; float sums up to addition order
        got = merged.arms[key]
        assert (got.requests, got.errors, got.latency.bins) == (
            stats.requests,
            stats.errors,
            stats.latency.bins,
        )
        assert got.latency.total == pytest.approx(stats.latency.total)


def test_write_creates_the_files(tmp_path: Path):
    report: Report = build_report(promoted())
    paths = report.write(tmp_path / "out")
    assert sorted(p.name for p in paths) == ["errors.png", "latency.png", "report.html", "report.md"]
    assert (tmp_path / "out" / "latency.png").read_bytes() == report.images["latency.png"]
    assert (tmp_path / "out" / "report.md").read_text() == report.markdown
