"""The dashboard's time series: buckets merge exactly, stay bounded, and coarsen without losing counts."""

import pytest

from rollout.series import ArmSeries
from serving.dashboard import asset
from serving.telemetry import Window


def window(arm: str, latencies: list[float], errors: int = 0) -> Window:
    w = Window()
    for latency in latencies:
        w.arm(arm).record("ok", latency)
        w.arm(arm, ("tier", "gold")).record("ok", latency)  # segments are not charted
    for _ in range(errors):
        w.arm(arm).record("error", 0.01)
    return w


def test_windows_in_one_bucket_merge_exactly():
    series = ArmSeries(width_s=5)
    series.add(window("stable", [0.010] * 90), now=100.0)
    series.add(window("stable", [0.100] * 10, errors=5), now=104.9)
    series.add(window("candidate", [0.050] * 4), now=105.0)
    points = series.points()
    assert [p["t"] for p in points] == [100.0, 105.0]
    stable = points[0]["arms"]["stable"]
    assert stable["requests"] == 105 and stable["error_rate"] == pytest.approx(5 / 105)
    assert stable["p50"] == pytest.approx(10, rel=0.02) and stable["p99"] == pytest.approx(100, rel=0.02)
    assert "candidate" not in points[0]["arms"] and points[1]["arms"]["candidate"]["requests"] == 4


def test_a_long_history_is_kept_whole_at_a_coarser_grain():
    series = ArmSeries(width_s=1, max_points=10)
    for t in range(100):
        series.add(window("stable", [0.01] * 3), now=float(t))
    points = series.points()
    assert len(points) <= 10 and points[0]["width_s"] == 16
    assert sum(p["arms"]["stable"]["requests"] for p in points) == 300  # nothing dropped
    assert [p["t"] for p in points] == sorted(p["t"] for p in points)


def test_a_clock_step_back_never_reorders_the_series():
    series = ArmSeries(width_s=5)
    series.add(window("stable", [0.01]), now=50.0)
    series.add(window("stable", [0.01]), now=40.0)
    assert [(p["t"], p["arms"]["stable"]["requests"]) for p in series.points()] == [(50.0, 2)]


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="max_points"):
        ArmSeries(width_s=5, max_points=1)


def test_only_the_shipped_dashboard_files_are_served():
    body, media_type = asset("index.html")
    assert b"dashboard/dashboard.js" in body and media_type.startswith("text/html")
    assert asset("dashboard.js")[1].startswith("text/javascript")
    assert asset("../ingress.py") is None and asset("/etc/passwd") is None
