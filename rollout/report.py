"""The post-rollout report: Markdown and a self-contained HTML page, with matplotlib plots of latency and
errors per arm over time. Pure apart from rendering the plots: everything comes in as a `ReportInput` (read
from the store by the caller), nothing reads a clock or the network.

The page says what happened and why: outcome, owner and written rollback condition, the gate evidence
(FAILs first), the worst segments, and every decision in order. A high-impact rollout that stopped in
``awaiting_review`` says so at the top: it holds there until someone acknowledges this report.

Both documents are built from one list of blocks, so the Markdown and the HTML cannot drift apart; every
string that came from outside (reasons, segment values, stage names) is escaped for the target format.

Example:
    >>> r = build_report(ReportInput(app="fraud", key="k", policy={"owner": "ml@example.com"},
    ...                              state={"stage": "promoted"}, events=[], windows=[], gates=[], worse=[]))
    >>> r.markdown.splitlines()[0], sorted(r.images)
    ('# fraud: ? → ?: promoted', ['errors.png', 'latency.png'])
"""

from __future__ import annotations

import base64
import html
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from serving.segments import ALL
from serving.sketch import LatencySketch
from serving.telemetry import ArmStats, Window

MAX_POINTS = 200  # plotted points per series; adjacent windows merge (exactly) beyond that
MAX_LEADS = 10  # segments listed, largest p95 ratio first, after a global FAIL no segment explains
ARMS = ("stable", "candidate", "shadow")
_COLORS = {"stable": "#1f77b4", "candidate": "#ff7f0e", "shadow": "#ff7f0e"}
_VERDICT_ORDER = {"FAIL": 0, "ERROR": 1, "INCONCLUSIVE": 2, "NODATA": 3, "PASS": 4}
_FINAL = {"promoted": "#2ca02c", "rolled_back": "#d62728"}  # outcome moments marked on the plots
_NONE = "—"
_ABOUT = {
    "Owner": "owner",
    "Rollback condition": "rollback_condition",
    "Impact": "impact",
    "Change": "change",
}


@dataclass(frozen=True)
class ReportInput:
    """Everything a report is written from; the caller reads it from the store and the controller.

    Attributes:
        app: the Serve application.
        key: the rollout key in the store.
        policy: the rollout policy ("owner", "rollback_condition", "impact", "change", "stages", ...).
        state: the final state ("stage", "candidate_weight", "shadow_percent", "versions", "rollout_id").
        events: `RolloutStore.events` of the rollout, in order.
        windows: `RolloutStore.windows` of the rollout: (stage, window) in time order.
        gates: the latest gate results: {"gate", "segment", "verdict", "evidence": {"stable": {"n",
            "estimate", "lower", "upper"}, "candidate": {...}, "rule", "reason"}}.
        worse: segments where the candidate is worse, e.g. ["tier=gold"].
    """

    app: str
    key: str
    policy: dict[str, Any]
    state: dict[str, Any]
    events: list[dict[str, Any]]
    windows: list[tuple[str, Window]]
    gates: list[dict[str, Any]]
    worse: list[str]


@dataclass(frozen=True)
class Report:
    """A rendered report. ``html`` embeds the images; ``markdown`` links them by file name."""

    markdown: str
    html: str
    images: dict[str, bytes]

    def write(self, directory: Path) -> list[Path]:
        """Writes report.md, report.html and the PNGs into ``directory`` (created); returns the paths."""
        directory.mkdir(parents=True, exist_ok=True)
        files = {"report.md": self.markdown.encode(), "report.html": self.html.encode(), **self.images}
        paths = []
        for name, content in files.items():
            path = directory / name
            path.write_bytes(content)
            paths.append(path)
        return paths


def build_report(data: ReportInput) -> Report:
    """Builds the report: sections as blocks, then the plots, then Markdown and HTML from the same blocks."""
    t0, t_end = _time_span(data)
    images = _plots(data.windows, data.events, t0)
    blocks = _blocks(data, t0, t_end)
    return Report(_markdown(blocks), _html(blocks, images, _title(data)), images)


# -- the sections ------------------------------------------------------------------------------------------

Block = tuple[Any, ...]  # ("h1"|"h2"|"p"|"note", text) | ("table", headers, rows) | ("img", name, alt)


def _title(data: ReportInput) -> str:
    versions = data.state.get("versions") or {}
    stage, outcome = str(data.state.get("stage", "unknown")), data.state.get("outcome")
    # after a high-impact rollout ends, the stage is awaiting_review or closed: say how it ended too
    outcome = f"{outcome} ({stage.replace('_', ' ')})" if outcome and outcome != stage else stage
    return f"{data.app}: {versions.get('stable', '?')} → {versions.get('candidate', '?')}: {outcome}"


def _blocks(data: ReportInput, t0: float | None, t_end: float | None) -> list[Block]:
    policy, state = data.policy, data.state
    stage = str(state.get("stage", "unknown"))
    blocks: list[Block] = [("h1", _title(data))]
    if stage == "awaiting_review":
        impact = policy.get("impact", "high")
        note = (
            f"Awaiting review: a {impact}-impact rollout stays here until someone acknowledges this report."
        )
        blocks.append(("note", note))
    about = {name: policy.get(field) for name, field in _ABOUT.items()}
    about["Rollout"] = f"{_text(state.get('rollout_id'))} (key {data.key})"
    about["Compared with"] = (
        "stable sampled at the candidate's pace (comparative gates; baseline: matched)"
        if policy.get("baseline") == "matched"
        else "all of stable's answers since the rollout started (baseline: all)"
    )
    blocks.append(("table", ["", ""], [[k, _text(v)] for k, v in about.items()]))

    merged = Window()
    for _, window in data.windows:
        merged.merge(window)
    duration = _duration(t_end - t0 if t0 is not None and t_end is not None else None)
    weight = _percent_points(state.get("candidate_weight"))
    outcome = [["Final stage", stage], ["Candidate weight", weight]]
    outcome += [["Shadow", _percent_points(state.get("shadow_percent"))]]
    outcome += [["Started", _utc(t0)], ["Duration", duration]]
    arms = [_arm_row(arm, merged.arms[(arm, ALL)]) for arm in ARMS if (arm, ALL) in merged.arms]
    blocks += [
        ("h2", "Outcome"),
        ("table", ["", ""], outcome),
        (
            "table",
            _cols("Arm|Requests|Error rate|p50|p95|p99|Fallbacks"),
            arms or [["no data", *[_NONE] * 6]],
        ),
        ("h2", "Latency and errors per arm"),
        ("p", "Vertical lines mark stage changes and the final decision; times are since the start."),
        ("img", "latency.png", "Latency p50 and p95 per arm over time"),
        ("img", "errors.png", "Error rate per arm over time"),
        ("h2", "Gate evidence"),
    ]
    gates = sorted(data.gates, key=lambda g: _VERDICT_ORDER.get(_verdict(g), 5))  # FAILs first
    if gates:
        headers = _cols("Gate|Segment|Verdict|Stable|Candidate|Rule / reason")
        blocks.append(("table", headers, [_gate_row(g) for g in gates]))
    else:
        blocks.append(("p", "No gate results were recorded."))

    blocks.append(("h2", "Worst segments"))
    if data.worse:
        failing: dict[str, list[str]] = {}
        for g in gates:
            if _verdict(g) == "FAIL":
                failing.setdefault(_segment(g.get("segment")), []).append(str(g.get("gate", "?")))
        headers = _cols(
            "Segment|Requests (s / c)|p95 stable|p95 candidate|Errors stable|Errors candidate|Failing gates"
        )
        blocks.append(("table", headers, [_segment_row(s, merged, failing.get(s, [])) for s in data.worse]))
    elif global_failures := sorted({str(g.get("gate", "?")) for g in gates if _is_global_fail(g)}):
        # A regression confined to one segment usually fails the global test first, before that segment has
        # the samples to be named at its own level: the rollback stands, and the reader still needs a lead.
        blocks.append(
            (
                "p",
                f"The candidate failed globally ({', '.join(global_failures)}); no single segment had the "
                "samples yet to be named at its test's level. Every segment, the largest p95 ratio of "
                "candidate to stable first (estimates, not tested):",
            )
        )
        headers = _cols(
            "Segment|Requests (s / c)|p95 stable|p95 candidate|Errors stable|Errors candidate|Failing gates"
        )
        leads = _segments_by_p95_ratio(merged)[:MAX_LEADS]
        blocks.append(("table", headers, [_segment_row(s, merged, []) for s in leads] or [[_NONE] * 7]))
    else:
        blocks.append(("p", "None: the candidate was not worse in any segment."))

    blocks.append(("h2", "Decision timeline"))
    if data.events:
        headers = _cols("Time (UTC)|Since start|Kind|From → to|Weight|Shadow|Actor|Reason")
        blocks.append(("table", headers, [_event_row(e, t0) for e in data.events]))
    else:
        blocks.append(("p", "No events were recorded."))
    return blocks


def _cols(spec: str) -> list[str]:
    return spec.split("|")


def _arm_row(arm: str, stats: ArmStats) -> list[str]:
    quantiles = [_ms(stats.latency, q) for q in (0.5, 0.95, 0.99)]
    return [arm, f"{stats.requests:,}", _percent(_error_rate(stats)), *quantiles, f"{stats.fallbacks:,}"]


def _gate_row(gate: dict[str, Any]) -> list[str]:
    name, evidence = str(gate.get("gate", "?")), gate.get("evidence") or {}
    unit = str(evidence.get("unit") or _unit_of(name))
    why = "; ".join(str(x) for x in (evidence.get("rule"), evidence.get("reason")) if x) or _NONE
    sides = [_estimate(evidence.get(arm), unit) for arm in ("stable", "candidate")]
    return [name, _segment(gate.get("segment")), _verdict(gate), *sides, why]


def _is_global_fail(gate: dict[str, Any]) -> bool:
    return _verdict(gate) == "FAIL" and _segment(gate.get("segment")) == "all"


def _segments_by_p95_ratio(merged: Window) -> list[str]:
    """The segments where both live arms have latencies, the largest candidate p95 ÷ stable p95 first; not a
    segment that holds all of both arms' requests (a label with one value), which says nothing of where."""
    ratios: list[tuple[float, str]] = []
    whole = merged.arm("stable", ALL).requests, merged.arm("candidate", ALL).requests
    for arm, segment in merged.arms:
        if arm != "candidate" or segment == ALL:
            continue
        stable, candidate = merged.arms.get(("stable", segment)), merged.arms[(arm, segment)]
        if (stable.requests if stable is not None else 0, candidate.requests) == whole:
            continue
        s95 = stable.latency.quantile(0.95) if stable is not None else None
        c95 = candidate.latency.quantile(0.95)
        if s95 and c95 is not None:
            ratios.append((c95 / s95, f"{segment[0]}={segment[1]}"))
    return [name for _, name in sorted(ratios, key=lambda r: (-r[0], r[1]))]


def _segment_row(segment: str, merged: Window, gates: list[str]) -> list[str]:
    label, _, value = segment.partition("=")
    s = merged.arms.get(("stable", (label, value))) or ArmStats()
    c = merged.arms.get(("candidate", (label, value))) or ArmStats()
    p95 = [_ms(s.latency, 0.95), _ms(c.latency, 0.95)]
    errors = [_percent(_error_rate(s)), _percent(_error_rate(c))]
    return [segment, f"{s.requests:,} / {c.requests:,}", *p95, *errors, ", ".join(gates) or _NONE]


def _event_row(event: dict[str, Any], t0: float | None) -> list[str]:
    ts = float(event["ts"]) if isinstance(event.get("ts"), int | float) else None
    since = _duration(ts - t0) if ts is not None and t0 is not None else _NONE
    moved = (
        f"{_text(event.get('from'))} → {_text(event.get('to'))}"
        if "from" in event or "to" in event
        else _NONE
    )
    shares = [_percent_points(event.get(k)) for k in ("weight", "shadow_percent")]
    who = [_text(event.get(k)) for k in ("actor", "reason")]
    return [_utc(ts), since, _text(event.get("kind")), moved, *shares, *who]


# -- numbers for humans ------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return _NONE if value is None or value == "" else str(value)


def _error_rate(stats: ArmStats) -> float | None:
    # every way a request failed the caller counts here, unlike the judge's per-gate rates
    failed = stats.errors + stats.overloaded + stats.timeouts
    return failed / stats.requests if stats.requests else None


def _ms(sketch: LatencySketch, q: float) -> str:
    value = sketch.quantile(q)
    return _NONE if value is None else f"{value * 1000:.1f} ms"


def _percent(ratio: float | None) -> str:
    return _NONE if ratio is None else f"{ratio * 100:.2f}%"


def _percent_points(value: Any) -> str:
    return f"{float(value):g}%" if isinstance(value, int | float) and not isinstance(value, bool) else _NONE


def _unit_of(gate: str) -> str:
    name = gate.lower()
    if name.endswith("_ms") or "latency" in name:
        return "ms"
    if "rate" in name:
        return "ratio"
    if name.endswith(("_events", "_count")):
        return "count"
    return "number"


def _number(value: Any, unit: str) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return _NONE
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "s":
        return f"{value * 1000:.1f} ms"
    if unit in ("ratio", "%"):
        return f"{value * 100:.2f}%"
    if unit == "count":
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:.2f}"
    return f"{value:.4g}"


def _estimate(side: Any, unit: str) -> str:
    if not isinstance(side, dict) or side.get("estimate") is None:
        return _NONE
    text = _number(side.get("estimate"), unit)
    if side.get("lower") is not None or side.get("upper") is not None:
        text += f" [{_number(side.get('lower'), unit)}, {_number(side.get('upper'), unit)}]"
    if isinstance(side.get("n"), int):
        text += f" (n={side['n']:,})"
    return text


def _verdict(gate: dict[str, Any]) -> str:
    return str(gate.get("verdict", "?")).rsplit(".", 1)[-1].upper()  # "GateVerdict.FAIL" or "fail" alike


def _segment(segment: Any) -> str:
    if segment is None or segment == "all" or (isinstance(segment, list | tuple) and tuple(segment) == ALL):
        return "all"
    if isinstance(segment, list | tuple) and len(segment) == 2:
        return f"{segment[0]}={segment[1]}"
    return str(segment)


def _utc(ts: float | None) -> str:
    return _NONE if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return _NONE
    s = max(0, round(seconds))
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return f"{h} h {m} min" if h else f"{m} min {s} s" if m else f"{s} s"


def _time_span(data: ReportInput) -> tuple[float | None, float | None]:
    times = [float(e["ts"]) for e in data.events if isinstance(e.get("ts"), int | float)]
    for _, window in data.windows:
        times += [window.start, window.end]
    return (min(times), max(times)) if times else (None, None)


# -- plots -------------------------------------------------------------------------------------------------


def _resample(windows: Sequence[tuple[str, Window]]) -> list[Window]:
    """Adjacent windows merged into at most `MAX_POINTS` (merging is exact, so no statistic is averaged)."""
    size = max(1, math.ceil(len(windows) / MAX_POINTS))
    buckets = []
    for i in range(0, len(windows), size):
        bucket = Window()
        for _, window in windows[i : i + size]:
            bucket.merge(window)
        buckets.append(bucket)
    return buckets


def _plots(
    windows: list[tuple[str, Window]], events: list[dict[str, Any]], t0: float | None
) -> dict[str, bytes]:
    start = t0 or 0.0
    span = max((w.end for _, w in windows), default=start) - start
    scale, unit = (60.0, "min") if span > 900 else (1.0, "s")
    buckets = _resample(windows)
    xs = [((w.start + w.end) / 2 - start) / scale for w in buckets]

    def series(arm: str, value: Any) -> list[float]:
        out = []
        for w in buckets:
            stats = w.arms.get((arm, ALL))
            v = value(stats) if stats is not None and stats.requests else None
            out.append(math.nan if v is None else float(v))  # NaN leaves a gap in the line
        return out

    marks = _marks(windows, events, start, scale)
    latency = Figure(figsize=(9, 5.5), layout="constrained")
    axes = latency.subplots(2, 1, sharex=True)
    for ax, q in zip(axes, (0.95, 0.5), strict=True):
        lines = {arm: series(arm, lambda s, q=q: _scaled(s.latency.quantile(q), 1000)) for arm in ARMS}
        _draw(ax, xs, lines, f"p{round(q * 100)} latency (ms)", marks)
    axes[-1].set_xlabel(f"time since start ({unit})")
    errors = Figure(figsize=(9, 3.5), layout="constrained")
    ax = errors.subplots()
    lines = {arm: series(arm, lambda s: _scaled(_error_rate(s), 100)) for arm in ARMS}
    _draw(ax, xs, lines, "error rate (%)", marks)
    ax.set_xlabel(f"time since start ({unit})")
    return {"latency.png": _png(latency), "errors.png": _png(errors)}


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _marks(
    windows: list[tuple[str, Window]], events: list[dict[str, Any]], start: float, scale: float
) -> list[tuple[float, str, str]]:
    """(x, label, color): each stage's first window, and the moment of promotion or rollback."""
    marks, previous = [], None
    for stage, window in windows:
        if stage != previous:
            marks.append(((window.start - start) / scale, stage, "#7f7f7f"))
            previous = stage
    for event in events:
        to, kind = str(event.get("to")), str(event.get("kind"))
        # the transition into a final phase, not later events that merely restate it (check, superseded)
        outcome = (
            to if to in _FINAL and event.get("from") != to else "rolled_back" if kind == "rollback" else None
        )
        if outcome is not None and isinstance(event.get("ts"), int | float):
            marks.append(((float(event["ts"]) - start) / scale, outcome, _FINAL[outcome]))
    return marks


def _draw(ax: Any, xs: list[float], lines: dict[str, list[float]], ylabel: str, marks: list[Any]) -> None:
    drawn = False
    for arm, ys in lines.items():
        if all(math.isnan(y) for y in ys):
            continue  # an arm that never served (no shadow stage, or no candidate yet) is left out
        style = "--" if arm == "shadow" else "-"
        ax.plot(
            xs, ys, style, color=_COLORS[arm], label=arm, linewidth=1.4, marker="." if len(xs) < 30 else ""
        )
        drawn = True
    for x, label, color in marks:
        ax.axvline(x, color=color, linestyle=":" if color == "#7f7f7f" else "-", linewidth=1)
        # inside the axes, right of the line, so neither the first stage at x=0 nor the last is clipped
        where = {"xycoords": ("data", "axes fraction"), "xytext": (2, -3), "textcoords": "offset points"}
        ax.annotate(_plain(label), (x, 1), **where, rotation=90, fontsize=7, va="top", ha="left", color=color)
    if drawn:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: never hides data
        ax.set_ylim(bottom=0)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="#7f7f7f")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _plain(label: str) -> str:
    return label.replace("$", r"\$")  # a "$" pair would switch matplotlib to mathtext, which can raise


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # a stage name in a script the default font lacks draws as boxes; that is no reason to fail a report
        warnings.filterwarnings("ignore", message="Glyph .* missing", category=UserWarning)
        figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


# -- rendering ---------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    # "<" escaped so Markdown renderers that pass raw HTML through cannot be made to run a reason's script
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _markdown(blocks: list[Block]) -> str:
    out: list[str] = []
    for kind, *rest in blocks:
        if kind == "h1":
            out += [f"# {_md_cell(rest[0])}", ""]
        elif kind == "h2":
            out += [f"## {_md_cell(rest[0])}", ""]
        elif kind == "p":
            out += [_md_cell(rest[0]), ""]
        elif kind == "note":
            out += [f"> **{_md_cell(rest[0])}**", ""]
        elif kind == "img":
            out += [f"![{rest[1]}]({rest[0]})", ""]
        elif kind == "table":
            headers, rows = rest
            out.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
    return "\n".join(out)


_CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;"
    "text-align:left;vertical-align:top;font-size:.92em}th{background:#f4f4f4}"
    ".note{background:#fff4e5;border-left:4px solid #f0a020;padding:.6em 1em;font-weight:600}"
    "img{max-width:100%}"
)


def _html(blocks: list[Block], images: dict[str, bytes], title: str) -> str:
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
    ]
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(f"<{kind}>{e(rest[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{e(rest[0])}</p>")
        elif kind == "note":
            out.append(f"<p class='note'>{e(rest[0])}</p>")
        elif kind == "img":
            data = base64.b64encode(images[rest[0]]).decode()
            out.append(f"<p><img src='data:image/png;base64,{data}' alt='{e(rest[1])}'></p>")
        elif kind == "table":
            headers, rows = rest
            out.append("<table>")
            if any(headers):
                out.append("<tr>" + "".join(f"<th>{e(h)}</th>" for h in headers) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
