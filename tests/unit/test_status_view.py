"""The `canary status` view rendered to plain text from states shaped like `GET /rollout`."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Group

from rollout.status_view import MAX_SEGMENT_ROWS, render_status, status_text

NOW = 1_700_000_000.0
STAGES = [
    {"name": "shadow", "shadow_percent": 100, "min_duration_s": 300, "min_requests": 1000},
    *(
        {"name": f"{w}%", "weight": w, "min_duration_s": 300, "min_requests": 1000}
        for w in (1, 5, 25, 50, 100)
    ),
]


def interval(n: int, estimate: float, lower: float, upper: float) -> dict[str, Any]:
    return {"n": n, "estimate": estimate, "lower": lower, "upper": upper}


def gate(name: str, segment: Any, verdict: str, reason: str = "", **evidence: Any) -> dict[str, Any]:
    return {"gate": name, "segment": segment, "verdict": verdict, "evidence": {"reason": reason, **evidence}}


def arm(version: str, requests: int, error_rate: float, p95: float) -> dict[str, Any]:
    stats = {
        "requests": requests,
        "error_rate": error_rate,
        "latency_ms": {"p50": 12.0, "p95": p95, "p99": 80.0},
    }
    return {"model_version": version, "stats": stats}


def event(seq: int, kind: str, before: str, after: str, weight: float, reason: str) -> dict[str, Any]:
    return {
        "seq": seq,
        "ts": NOW - 60 * (10 - seq),
        "kind": kind,
        "from": before,
        "to": after,
        "weight": weight,
        "actor": "controller",
        "reason": reason,
    }


PROMOTED: dict[str, Any] = {
    "app": "demo",
    "mode": "auto",
    "stage": "promoted",
    "stage_index": 5,
    "stages": STAGES,
    "candidate_weight": 100.0,
    "shadow_percent": 0.0,
    "stage_started_at": NOW - 192,
    "rollout_id": "r-7f3a",
    "owner": "ml-platform",
    "rollback_condition": "any global gate FAIL",
    "arms": {"stable": arm("v1", 120_000, 0.004, 40.1), "candidate": arm("v2", 118_000, 0.0035, 38.0)},
    "gates": [
        gate(
            "latency_p95",
            "all",
            "PASS",
            "within 10% of stable",
            stable=interval(120_000, 40.1, 39.0, 41.2),
            candidate=interval(118_000, 38.0, 37.1, 39.0),
        ),
        gate(
            "error_rate",
            "all",
            "PASS",
            "upper bound under stable + 0.5 pp",
            stable=interval(120_000, 0.004, 0.0036, 0.0044),
            candidate=interval(118_000, 0.0035, 0.0031, 0.0039),
        ),
        gate("feedback_score", None, "PASS", "mean not lower", stable=interval(5000, 0.8123, 0.80, 0.82)),
    ],
    "worse": [],
    "events": [event(9, "promoted", "100%", "promoted", 100, "all gates PASS at 100%")],
    "config_error": None,
}

ROLLED_BACK: dict[str, Any] = {
    **PROMOTED,
    "stage": "rolled_back",
    "stage_index": 2,
    "candidate_weight": 0.0,
    "gates": [
        gate("error_rate", "tier=free", "PASS", "fine"),
        gate("error_rate", ["tier", "gold"], "FAIL", "candidate 8.0% vs stable 0.3%"),
        gate("latency_p95", "region=eu", "INCONCLUSIVE", "interval too wide"),
        gate("latency_p95", "region=us", "NODATA", "no requests"),
        gate("latency_p95", "all", "PASS", "within 10%"),
        gate("error_rate", "all", "INCONCLUSIVE", "interval too wide"),
    ],
    "worse": ["tier=gold"],
    "events": [
        event(7, "transition", "1%", "5%", 5, "gates passed"),
        event(8, "rolled_back", "5%", "rolled_back", 0, "error_rate FAIL in tier=gold"),
    ],
}


def lines_with(text: str, *words: str) -> list[str]:
    return [line for line in text.splitlines() if all(w in line for w in words)]


def test_a_promoted_rollout_shows_its_stage_arms_gates_and_events():
    text = status_text(PROMOTED, now=NOW)

    assert "canary-serve · demo" in text
    assert lines_with(text, "stage", "promoted", "(stage 6 of 6)")
    assert lines_with(text, "traffic", "candidate 100% · shadow 0%")
    assert lines_with(text, "in stage", "3m 12s")
    assert lines_with(text, "rollout", "r-7f3a") and lines_with(text, "owner", "ml-platform")
    assert lines_with(text, "rollback if", "any global gate FAIL")
    assert lines_with(text, "stages", "shadow (mirror 100%) → 1% → 5% → 25% → 50% → 100%", "(promoted)")
    assert lines_with(text, "candidate", "v2", "118,000", "0.35%", "38.0 ms")
    for name in ("latency_p95", "error_rate", "feedback_score"):
        assert lines_with(text, name, "all", "PASS"), name
    assert lines_with(text, "promoted", "100% → promoted", "controller", "all gates PASS at 100%")
    assert "config error" not in text


def test_a_global_fail_no_segment_is_named_for_gives_the_largest_p95_ratio_as_an_estimate():
    def seg(value: str, stable_p95: float, candidate_p95: float) -> dict[str, Any]:
        return {
            "label": "tier",
            "value": value,
            "stable": {"requests": 60, "latency_ms": {"p95": stable_p95}},
            "candidate": {"requests": 13, "latency_ms": {"p95": candidate_p95}},
        }

    # endpoint=/predict holds every request of both arms: a larger ratio there says nothing of where
    whole = {
        "label": "endpoint",
        "value": "/predict",
        "stable": {"requests": 180, "latency_ms": {"p95": 10.0}},
        "candidate": {"requests": 39, "latency_ms": {"p95": 300.0}},
    }
    arms = {arm: {"stats": {"requests": n}} for arm, n in (("stable", 180), ("candidate", 39))}
    state = {
        **ROLLED_BACK,
        "arms": arms,
        "gates": [gate("latency_p95", "all", "FAIL", "p95 above 1.5x stable's")],
        "worse": [],
        "segments": [whole, seg("free", 12.0, 12.5), seg("gold", 12.0, 252.0), seg("pro", 11.0, None)],
    }
    text = status_text(state, now=NOW)
    assert lines_with(text, "failed overall", "largest p95 ratio at tier=gold (×21.00, an estimate")
    assert not lines_with(text, "candidate worse in")
    calm = {**state, "segments": [seg("free", 12.0, 12.5)]}
    assert lines_with(status_text(calm, now=NOW), "failed overall", "no segment has a p95 ratio above 1.1")
    assert not lines_with(status_text(PROMOTED, now=NOW), "failed overall")


def test_gate_values_are_shown_in_the_unit_their_name_says():
    text = status_text(PROMOTED, now=NOW)

    assert lines_with(text, "latency_p95", "40.1 ms [39.0, 41.2]", "38.0 ms [37.1, 39.0]")
    assert lines_with(text, "error_rate", "0.40% [0.36, 0.44]", "0.35% [0.31, 0.39]")
    assert lines_with(text, "feedback_score", "0.8123 [0.8, 0.82]")
    assert lines_with(text, "n=120,000", "n=118,000")


def test_a_rolled_back_rollout_shows_the_failing_segment_first_after_the_global_rows():
    text = status_text(ROLLED_BACK, now=NOW)

    assert lines_with(text, "stage", "rolled_back", "(stage 3 of 6)")
    assert lines_with(text, "stages", "1% → [5%] → 25%")  # the current stage is marked without colour too
    cells = [line.split("│")[1:4] for line in text.splitlines() if line.count("│") == 7]
    rows = [row for row in cells if row[2].strip() and row[2].strip() != "verdict"]
    assert rows == [
        [" latency_p95 ", " all       ", " PASS         "],
        [" error_rate  ", " all       ", " INCONCLUSIVE "],
        [" error_rate  ", " tier=gold ", " FAIL         "],
        [" latency_p95 ", " region=eu ", " INCONCLUSIVE "],
    ]
    assert not lines_with(text, "tier=free") and not lines_with(text, "region=us")
    assert "2 passing or no-data segment rows not shown" in text
    assert lines_with(text, "candidate worse in", "tier=gold")
    assert lines_with(text, "rolled_back", "5% → rolled_back", "error_rate FAIL in tier=gold")


def test_every_verdict_word_appears_in_the_gates_table():
    gates = [gate("error_rate", "all", v) for v in ("PASS", "FAIL", "INCONCLUSIVE", "NODATA", "ERROR")]
    text = status_text({"gates": gates}, now=NOW)
    for verdict in ("PASS", "FAIL", "INCONCLUSIVE", "NODATA", "ERROR"):
        assert lines_with(text, "error_rate", verdict), verdict


def test_long_segment_lists_are_truncated_with_a_count():
    failing = [gate("error_rate", f"tenant=t{i:02d}", "FAIL", "worse") for i in range(30)]
    unsure = [gate("error_rate", f"region=r{i:02d}", "INCONCLUSIVE") for i in range(5)]
    passing = [gate("error_rate", f"tier=p{i:02d}", "PASS") for i in range(7)]
    text = status_text({"gates": [*unsure, *passing, *failing, gate("error_rate", "all", "FAIL")]}, now=NOW)

    shown = [f"t{i:02d}" for i in range(30) if lines_with(text, f"tenant=t{i:02d}")]
    assert shown == [f"t{i:02d}" for i in range(MAX_SEGMENT_ROWS)]  # FAIL before INCONCLUSIVE, in order
    assert not lines_with(text, "region=r00")
    assert "20 more failing or inconclusive segment rows not shown" in text
    assert "7 passing or no-data segment rows not shown" in text


def test_only_the_last_events_are_listed():
    events = [event(i, "decision", "canary", "canary", 5, f"tick {i}") for i in range(20)]
    text = status_text({"events": events}, now=NOW)
    assert "last 8 of 20 events" in text
    assert lines_with(text, "tick 19") and lines_with(text, "tick 12") and not lines_with(text, "tick 11")


def test_the_server_may_count_more_events_than_it_sends():
    events = [event(i, "decision", "canary", "canary", 5, f"tick {i}") for i in range(3)]
    assert "last 3 of 1,250 events" in status_text({"events": events, "events_total": 1250}, now=NOW)


def test_versions_the_external_check_and_webhook_counts_are_in_the_header():
    state = {
        **ROLLED_BACK,
        "versions": {"stable": "v1", "candidate": "v2"},
        "check": {"stage_index": 2, "outcome": "FAIL", "reason": "http://ci/confirm answered 403", "at": NOW},
        "notifications": {"delivered": 12, "failed": 1, "dropped": 0},
    }
    text = status_text(state, now=NOW)
    assert lines_with(text, "versions", "stable v1 → candidate v2")
    assert lines_with(text, "external check", "FAIL", "http://ci/confirm answered 403")
    assert lines_with(text, "webhooks", "12 delivered, 1 failed, 0 dropped")


def test_a_config_error_is_shown():
    text = status_text(
        {**PROMOTED, "config_error": "stages[2].weight must be above stages[1].weight"}, now=NOW
    )
    assert lines_with(text, "config error", "stages[2].weight must be above")


def test_a_config_the_controller_has_not_taken_yet_is_shown():
    pending = "the rollout controller has not taken this config yet: StoreUnavailableError: no answer"
    text = status_text({**PROMOTED, "config_pending": pending}, now=NOW)
    assert lines_with(text, "config pending", "has not taken this config yet")
    assert "config pending" not in status_text(PROMOTED, now=NOW)


@pytest.mark.parametrize(
    "state",
    [
        {},
        dict.fromkeys(PROMOTED),  # every key present and None
        {"app": "old", "mode": "manual", "candidate_weight": 10, "arms": {"stable": {"stats": None}}},
        {"stage": "canary", "stage_index": 99, "stages": [None, "x", {"weight": "5"}], "gates": [None, 3]},
        {
            "arms": [],
            "gates": {},
            "events": "nope",
            "worse": [None, {"a": 1}],
            "stage_started_at": "yesterday",
        },
    ],
)
def test_partial_and_odd_states_render_what_exists(state: dict[str, Any]):
    text = status_text(state, now=NOW)
    assert "canary-serve" in text
    assert isinstance(render_status(state, now=NOW), Group)


def test_a_manual_rollout_from_an_older_server():
    text = status_text({"app": "old", "mode": "manual", "candidate_weight": 10}, now=NOW)
    assert lines_with(text, "stage", "manual") and lines_with(text, "traffic", "candidate 10%")


def test_text_from_the_server_is_not_markup_nor_terminal_control():
    state = {"gates": [gate("error_rate", "all", "FAIL", "[bold red]8%[/] \x1b[2J")]}
    text = status_text(state, now=NOW)
    assert "[bold red]8%[/]" in text and "\x1b" not in text


def test_time_in_stage_never_goes_negative():
    assert lines_with(status_text({"stage_started_at": NOW + 5}, now=NOW), "in stage", "0s")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


def partial(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional=keys) | json_values


estimates = partial({k: json_values for k in ("n", "estimate", "lower", "upper")})
states = st.fixed_dictionaries(
    {},
    optional={
        **{
            k: json_values
            for k in (
                "app",
                "mode",
                "stage",
                "stage_index",
                "candidate_weight",
                "shadow_percent",
                "stage_started_at",
                "rollout_id",
                "owner",
                "rollback_condition",
                "worse",
                "config_error",
                "versions",
                "check",
                "notifications",
                "events_total",
            )
        },
        "stages": st.lists(
            partial({k: json_values for k in ("name", "weight", "shadow_percent")}), max_size=4
        ),
        "arms": st.dictionaries(
            st.sampled_from(["stable", "candidate", "x"]), partial({"stats": json_values})
        ),
        "gates": st.lists(
            partial(
                {
                    "gate": st.sampled_from(["latency_p95", "error_rate", "score"]) | json_values,
                    "segment": json_values,
                    "verdict": st.sampled_from(["PASS", "FAIL", "INCONCLUSIVE"]) | json_values,
                    "evidence": partial({"reason": json_values, "stable": estimates, "candidate": estimates}),
                }
            ),
            max_size=4,
        ),
        "events": st.lists(
            partial({k: json_values for k in ("seq", "ts", "kind", "from", "weight")}), max_size=3
        ),
    },
)


@settings(max_examples=150, deadline=None)
@given(state=states, now=st.floats(allow_nan=False, allow_infinity=False))
def test_no_state_makes_the_view_raise(state: dict[str, Any], now: float):
    assert "canary-serve" in status_text(state, now=now, width=100)


def test_a_matched_baseline_is_shown_with_its_sample_sizes_and_the_default_is_not():
    matched = {
        **PROMOTED,
        "baseline": {"mode": "matched", "ratio": 3.0, "stable_requests": 5400, "candidate_requests": 1800},
    }
    assert lines_with(
        status_text(matched, now=NOW), "baseline", "time-matched, 3 stable", "(5,400 / 1,800 so far)"
    )
    assert "baseline" not in status_text({**PROMOTED, "baseline": {"mode": "all"}}, now=NOW)
