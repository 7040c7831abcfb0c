"""The ``canary status`` view: the JSON of ``GET /rollout`` in, a rich renderable out.

Pure: no HTTP and no clock (``now`` is passed in). The state may come from an older server or a manual-mode
rollout, so every key may be missing, None or of an unexpected type: the view shows what exists and never
raises. Text from the server is wrapped in `rich.text.Text`, never parsed as console markup, so a reason
like "[red]" prints as itself.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

STAGE_STYLES = {
    "promoted": "bold green",
    "closed": "green",
    "rolled_back": "bold red",
    "paused": "yellow",
    "awaiting_approval": "bold yellow",
    "awaiting_review": "bold yellow",
    "shadow": "cyan",
    "canary": "cyan",
    "pending": "dim",
    "manual": "blue",
}
VERDICT_STYLES = {
    "PASS": "green",
    "FAIL": "bold red",
    "ERROR": "bold magenta",
    "INCONCLUSIVE": "yellow",
    "NODATA": "dim",
}
MAX_SEGMENT_ROWS = 15
MAX_EVENTS = 8
MAX_WORSE = 10
LEAD_RATIO = 1.1  # a segment's p95 ratio worth naming as a lead when no segment is judged worse

# Segment rows worth a line, most alarming first; PASS and NODATA segments are only counted.
_SHOWN_SEGMENT_VERDICTS = ("FAIL", "ERROR", "INCONCLUSIVE")
_GLOBAL_SEGMENTS = {"", "all", "all=all", "*", "global"}


def render_status(state: Mapping[str, Any], *, now: float) -> Group:
    """Renders a rollout's state as the ``canary status`` screen.

    Args:
        state: the JSON of ``GET /rollout``; any key may be missing or None.
        now: the current time in epoch seconds, for "time in stage" and the events' ages.

    Returns:
        A header panel, then whichever of these the state has: the stage progress line, the arms, the
        gates (global rows first, then failing or inconclusive segments, at most `MAX_SEGMENT_ROWS`), the
        segments where the candidate is worse, and the last `MAX_EVENTS` events.
    """
    state = _map(state)
    parts: list[RenderableType | None] = [
        _header(state, now),
        _progress(state),
        _arms(state),
        _gates(state),
        _worse(state),
        _events(state, now),
    ]
    return Group(*(p for p in parts if p is not None))


def status_text(state: Mapping[str, Any], *, now: float, width: int = 120) -> str:
    """`render_status` as plain text (no colour, no terminal needed): for ``canary status --plain``, logs
    and tests.

    Args:
        state: the JSON of ``GET /rollout``.
        now: the current time in epoch seconds.
        width: columns of the text.

    Example:
        >>> text = status_text({"app": "demo", "stage": "promoted"}, now=0.0, width=60)
        >>> "demo" in text and "promoted" in text
        True
    """
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=width,
        color_system=None,
        force_terminal=False,
        force_jupyter=False,
        force_interactive=False,
        legacy_windows=False,
        highlight=False,
        emoji=False,
        _environ={},  # COLUMNS, NO_COLOR or TERM of whoever runs the tests must not change the text
    )
    console.print(render_status(state, now=now))
    return buffer.getvalue()


# --- sections ---------------------------------------------------------------------------------------------


def _header(state: Mapping[str, Any], now: float) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()

    stage = _str(state.get("stage")) or ("manual" if state.get("mode") == "manual" else "unknown")
    stage_cell = Text(stage, style=STAGE_STYLES.get(stage, ""))
    index, stages = _int(state.get("stage_index")), _seq(state.get("stages"))
    if index is not None and stages and 0 <= index < len(stages):
        stage_cell.append(f"  (stage {index + 1} of {len(stages)})", style="dim")
    grid.add_row("stage", stage_cell)
    versions = {_clean(str(arm)): _str(version) for arm, version in _map(state.get("versions")).items()}
    if shown := [f"{arm} {version}" for arm, version in versions.items() if version is not None]:
        grid.add_row("versions", Text(" → ".join(shown)))
    if (mode := _str(state.get("mode"))) is not None:
        grid.add_row("mode", Text(mode))

    traffic = []
    if (weight := _num(state.get("candidate_weight"))) is not None:
        traffic.append(f"candidate {_pct(weight)}")
    if (shadow := _num(state.get("shadow_percent"))) is not None:
        traffic.append(f"shadow {_pct(shadow)}")
    if traffic:
        grid.add_row("traffic", Text(" · ".join(traffic)))
    if (started := _num(state.get("stage_started_at"))) is not None:
        grid.add_row("in stage", Text(duration(now - started)))
    for key, label in (("rollout_id", "rollout"), ("owner", "owner"), ("rollback_condition", "rollback if")):
        if (value := _str(state.get(key))) is not None:
            grid.add_row(label, Text(value))
    baseline = _map(state.get("baseline"))
    if _str(baseline.get("mode")) == "matched":
        sizes = [_int(baseline.get(f"{arm}_requests")) for arm in ("stable", "candidate")]
        text = f"time-matched, {_num(baseline.get('ratio')) or 0:g} stable answers per candidate answer"
        if None not in sizes:
            text += f" ({sizes[0]:,} / {sizes[1]:,} so far)"
        grid.add_row("baseline", Text(text))
    check = _map(state.get("check"))
    if (outcome := _str(check.get("outcome"))) is not None:
        cell = Text(outcome, style=VERDICT_STYLES.get(outcome.upper(), ""))
        if (reason := _str(check.get("reason"))) is not None:
            cell.append(f"  {reason}")
        grid.add_row("external check", cell)
    notifications = _map(state.get("notifications"))
    if counts := [
        f"{count:,} {label}"
        for label in ("delivered", "failed", "dropped")
        if (count := _int(notifications.get(label))) is not None
    ]:
        grid.add_row("webhooks", Text(", ".join(counts)))
    if (error := _str(state.get("config_error"))) is not None:
        grid.add_row(Text("config error", style="bold red"), Text(error, style="red"))
    if (pending := _str(state.get("config_pending"))) is not None:
        grid.add_row(Text("config pending", style="bold yellow"), Text(pending, style="yellow"))

    app = _str(state.get("app")) or "?"
    return Panel(grid, title=Text(f"canary-serve · {app}", style="bold"), title_align="left", expand=False)


def _progress(state: Mapping[str, Any]) -> Text | None:
    stages = [_map(s) for s in _seq(state.get("stages"))]
    if not stages:
        return None
    index = _int(state.get("stage_index"))
    stage = _str(state.get("stage"))
    finished = stage in ("promoted", "closed")
    line = Text("stages  ", style="bold")
    for i, spec in enumerate(stages):
        if i:
            line.append(" → ", style="dim")
        label = _stage_label(spec, i)
        if i == index and not finished:
            # Brackets as well as colour, so the current stage shows in plain text too.
            line.append(f"[{label}]", style=f"reverse {STAGE_STYLES.get(stage or '', 'bold')}")
        elif finished or (index is not None and i < index):
            line.append(label, style="green")
        else:
            line.append(label, style="dim")
    if finished:
        line.append(f"  ({stage})", style=STAGE_STYLES.get(stage or "", ""))
    return line


def _stage_label(spec: Mapping[str, Any], i: int) -> str:
    name = _str(spec.get("name")) or f"stage {i + 1}"
    if (weight := _num(spec.get("weight"))) is not None and name != _pct(weight):
        return f"{name} {_pct(weight)}"
    if (shadow := _num(spec.get("shadow_percent"))) is not None:
        return f"{name} (mirror {_pct(shadow)})"
    return name


def _arms(state: Mapping[str, Any]) -> Table | None:
    arms = _map(state.get("arms"))
    if not arms:
        return None
    table = Table(title="arms", title_justify="left")
    table.add_column("arm")
    table.add_column("model version")
    for column in ("requests", "errors", "p50", "p95", "p99"):
        table.add_column(column, justify="right")
    for name in (
        "stable",
        "candidate",
        *sorted((k for k in arms if k not in ("stable", "candidate")), key=str),
    ):
        if name not in arms:
            continue
        arm = _map(arms[name])
        stats = _map(arm.get("stats"))
        latency = _map(stats.get("latency_ms"))
        requests = _int(stats.get("requests"))
        error_rate = _num(stats.get("error_rate"))
        table.add_row(
            Text(_clean(str(name))),
            Text(_str(arm.get("model_version")) or "-"),
            Text(f"{requests:,}" if requests is not None else "-"),
            Text(_fraction_pct(error_rate) if error_rate is not None else "-"),
            *(Text(_ms(_num(latency.get(q)))) for q in ("p50", "p95", "p99")),
        )
    return table


def _gates(state: Mapping[str, Any]) -> RenderableType | None:
    gates = [_map(g) for g in _seq(state.get("gates"))]
    if not gates:
        return None
    overall = [g for g in gates if _is_global(g.get("segment"))]
    segments = [g for g in gates if not _is_global(g.get("segment"))]
    shown = sorted(
        (g for g in segments if _verdict(g) in _SHOWN_SEGMENT_VERDICTS),
        key=lambda g: _SHOWN_SEGMENT_VERDICTS.index(_verdict(g)),  # stable sort: the server's order within
    )
    hidden_bad = max(0, len(shown) - MAX_SEGMENT_ROWS)
    hidden_ok = len(segments) - len(shown)
    shown = shown[:MAX_SEGMENT_ROWS]

    table = Table(title="gates", title_justify="left")
    for column in ("gate", "segment", "verdict", "stable", "candidate"):
        table.add_column(column, no_wrap=column == "verdict", overflow="fold")
    table.add_column("reason", overflow="fold")
    for i, gate in enumerate(overall + shown):
        name = _str(gate.get("gate")) or "?"
        evidence = _map(gate.get("evidence"))
        verdict = _verdict(gate)
        table.add_row(
            Text(name),
            Text(_segment_name(gate.get("segment"))),
            Text(verdict or "-", style=VERDICT_STYLES.get(verdict, "")),
            _estimate(name, _map(evidence.get("stable"))),
            _estimate(name, _map(evidence.get("candidate"))),
            Text(_str(evidence.get("reason")) or ""),
            end_section=i == len(overall) - 1 and bool(shown),
        )
    # Below the table rather than as its caption: a caption wraps at the table's width, often narrow.
    notes = []
    if hidden_bad:
        notes.append(f"{hidden_bad} more failing or inconclusive segment rows not shown")
    if hidden_ok:
        notes.append(f"{hidden_ok} passing or no-data segment rows not shown")
    return Group(table, Text("; ".join(notes), style="dim")) if notes else table


def _worse(state: Mapping[str, Any]) -> Text | None:
    worse = [w for w in map(_str, _seq(state.get("worse"))) if w]
    if not worse:
        return _unnamed_lead(state)
    line = Text("candidate worse in  ", style="bold")
    line.append(", ".join(worse[:MAX_WORSE]), style="red")
    if len(worse) > MAX_WORSE:
        line.append(f"  (+{len(worse) - MAX_WORSE} more)")
    return line


def _unnamed_lead(state: Mapping[str, Any]) -> Text | None:
    """After a global FAIL no segment has the samples to be named for yet: the segment with the largest p95
    ratio (candidate ÷ stable, above 1.1), said to be an estimate."""
    gates = [_map(g) for g in _seq(state.get("gates"))]
    if not any(_is_global(g.get("segment")) and _verdict(g) == "FAIL" for g in gates):
        return None
    ratios: list[tuple[float, str]] = []
    arms = _map(state.get("arms"))
    whole = [_num(_map(_map(arms.get(a)).get("stats")).get("requests")) for a in ("stable", "candidate")]
    for seg in map(_map, _seq(state.get("segments"))):
        stable = _num(_map(_map(seg.get("stable")).get("latency_ms")).get("p95"))
        candidate = _num(_map(_map(seg.get("candidate")).get("latency_ms")).get("p95"))
        label, value = _str(seg.get("label")), _str(seg.get("value"))
        if [_num(_map(seg.get(a)).get("requests")) for a in ("stable", "candidate")] == whole:
            continue  # a label with one value holds every request: it says nothing of where
        if stable and candidate is not None and label and value and candidate / stable > LEAD_RATIO:
            ratios.append((candidate / stable, f"{label}={value}"))
    line = Text("failed overall  ", style="bold")
    if not ratios:
        return line.append("no segment has a p95 ratio above 1.1")
    ratio, name = max(ratios)
    line.append(f"largest p95 ratio at {name}", style="red")
    return line.append(f" (×{ratio:.2f}, an estimate: too few samples there to prove it)")


def _events(state: Mapping[str, Any], now: float) -> Table | None:
    events = [_map(e) for e in _seq(state.get("events"))]
    if not events:
        return None
    last = events[-MAX_EVENTS:]
    # The server sends only its most recent events and counts them all in events_total.
    total = max(len(events), _int(state.get("events_total")) or 0)
    title = "events" if total <= len(last) else f"last {len(last)} of {total:,} events"
    table = Table(title=title, title_justify="left")
    for column in ("seq", "when", "kind", "change", "weight", "actor"):
        table.add_column(
            column,
            no_wrap=column in ("seq", "when"),
            overflow="fold",
            justify="right" if column == "seq" else "left",
        )
    table.add_column("reason", overflow="fold")
    for event in last:
        seq = _int(event.get("seq"))
        ts = _num(event.get("ts"))
        before, after = _str(event.get("from")), _str(event.get("to"))
        change = f"{before or '?'} → {after or '?'}" if before or after else ""
        traffic = []
        if (weight := _num(event.get("weight"))) is not None:
            traffic.append(_pct(weight))
        if (shadow := _num(event.get("shadow_percent"))) is not None and shadow > 0:
            traffic.append(f"shadow {_pct(shadow)}")
        kind = _str(event.get("kind")) or ""
        table.add_row(
            Text(str(seq) if seq is not None else ""),
            Text(f"{duration(now - ts)} ago" if ts is not None else ""),
            Text(kind, style="red" if kind == "rolled_back" else "green" if kind == "promoted" else ""),
            Text(change),
            Text(" + ".join(traffic)),
            Text(_str(event.get("actor")) or ""),
            Text(_str(event.get("reason")) or ""),
        )
    return table


# --- formatting -------------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A time span for people, to the second under an hour.

    Example:
        >>> duration(42), duration(192), duration(7500), duration(200_000)
        ('42s', '3m 12s', '2h 05m', '2d 07h')
    """
    s = int(max(0.0, seconds))  # a clock a little behind the server's reads as "0s", not a negative span
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def _estimate(gate: str, arm: Mapping[str, Any]) -> Text:
    """``est [lower, upper]`` in the gate's unit, and the sample size on a second line."""
    estimate = _num(arm.get("estimate"))
    n = _int(arm.get("n"))
    if estimate is None:
        return Text(f"-\nn={n:,}" if n is not None else "-", style="dim")
    # The gate's name says its unit: latency_* in milliseconds, *_rate a fraction shown as percent. Fixed
    # decimals for those (rows line up), significant digits for unit-less metrics of any scale.
    if "latency" in gate:
        unit, scale, spec = " ms", 1.0, ".1f"
    elif gate.endswith("rate"):
        unit, scale, spec = "%", 100.0, ".2f"
    else:
        unit, scale, spec = "", 1.0, ".4g"
    text = Text(format(estimate * scale, spec) + unit)
    lower, upper = _num(arm.get("lower")), _num(arm.get("upper"))
    if lower is not None and upper is not None:
        text.append(f" [{lower * scale:{spec}}, {upper * scale:{spec}}]")
    if n is not None:
        text.append(f"\nn={n:,}", style="dim")
    return text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _pct(percent: float) -> str:
    return f"{percent:g}%"


def _fraction_pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def _verdict(gate: Mapping[str, Any]) -> str:
    return (_str(gate.get("verdict")) or "").upper()


def _segment_name(segment: Any) -> str:
    if _is_global(segment):
        return "all"
    if isinstance(segment, list | tuple) and len(segment) == 2:
        return _clean(f"{segment[0]}={segment[1]}")
    return _clean(str(segment))


def _is_global(segment: Any) -> bool:
    if segment is None:
        return True
    if isinstance(segment, list | tuple):
        return len(segment) == 2 and segment[0] == "all"
    return str(segment).strip().lower() in _GLOBAL_SEGMENTS


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _seq(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _str(value: Any) -> str | None:
    if value is None or isinstance(value, Mapping | list | tuple):
        return None
    return _clean(str(value))


def _clean(text: str) -> str:
    # An escape sequence in a reason from the server must not reach the terminal (rich keeps ESC).
    return "".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in text)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond a float's range
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None else None
