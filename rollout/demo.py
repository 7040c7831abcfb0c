"""`canary demo`: the main job. Brings up a local Ray, deploys an automatic rollout of fraud-v2 that walks
shadow → 5 → 25 → 50 → 100 % on evidence and is promoted, then a bad candidate (every gold-tier answer slower
by stable's p95, the other tiers untouched) that is rolled back with that segment named; demo traffic with
human review scores throughout, and a live view of the stage, each gate's verdict and the traffic in the
terminal.
"""

from __future__ import annotations

import copy
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from rollout.cluster import SERVE_URL, LocalHead, serve_deploy, wait_for
from rollout.configfile import check_config, load_config
from rollout.status_view import render_status
from rollout.traffic import TENANTS, TrafficStats, drive
from serving.admintoken import admin_token

DEMO_CONFIG = "configs/demo-rollout.yaml"
BAD_TIER = "gold"


def _ingress_rollout(config: dict[str, Any]) -> dict[str, Any]:
    for app in config.get("applications", []):
        for dep in app.get("deployments") or []:
            if dep.get("name") == "Ingress":
                rollout: dict[str, Any] = dep.setdefault("user_config", {}).setdefault("rollout", {})
                return rollout
    raise KeyError("no Ingress deployment in the config")


def with_weight(config: dict[str, Any], weight: float) -> dict[str, Any]:
    """A copy of a canary config whose Ingress ``rollout.candidate_weight`` is ``weight``."""
    config = copy.deepcopy(config)
    _ingress_rollout(config)["candidate_weight"] = weight
    return config


BAD_JUDGE_INTERVAL_S = 4.0
BAD_FIRST_WEIGHT = 25


def bad_candidate(config: dict[str, Any], added_ms: float, tier: str = BAD_TIER) -> dict[str, Any]:
    """A new rollout of the same config whose candidate is ``added_ms`` slower for one tenant tier only.

    The overall latency gate sees every candidate answer, the tier's own gate only the tier's (~45 %), so
    judged every second at 5 % the overall gate fails first, a few samples before the tier could be named.
    This rollout's first canary stage is 25 % and it is judged every 4 s, so the first judgement at 25 % sees
    ~60 candidate answers, enough for the tier's own gate as well."""
    config = copy.deepcopy(config)
    rollout = _ingress_rollout(config)
    rollout["rollout_id"] = f"{rollout.get('rollout_id') or 'demo'}-bad-{tier}"
    rollout["judge_interval_s"] = BAD_JUDGE_INTERVAL_S
    stages = rollout.get("stages") or []
    rollout["stages"] = [s for s in stages if "weight" not in s or s["weight"] >= BAD_FIRST_WEIGHT] or stages
    for app in config.get("applications", []):
        for dep in app.get("deployments") or []:
            if dep.get("name") == "candidate":
                dep.setdefault("user_config", {})["faults"] = {
                    "latency_ms": round(added_ms, 1),
                    "segment": {"X-Tenant-Tier": tier},
                }
    return config


def _stable_p95_ms(state: dict[str, Any]) -> float | None:
    """Stable's p95 in the model call, from ``GET /rollout``."""
    try:
        value = state["arms"]["stable"]["stats"]["latency_ms"]["p95"]
    except (KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) and value > 0 else None


def render(stats: TrafficStats, title: str) -> Group:
    elapsed = max(1e-6, time.monotonic() - stats.started)
    arms = Table(title=f"{title} — {stats.total} requests, {stats.total / elapsed:.0f} req/s")
    for column in ("arm", "requests", "share", "p50 ms", "p95 ms", "p99 ms", "non-2xx", "fallbacks"):
        arms.add_column(column, justify="right" if column != "arm" else "left")
    answered = sum(s.requests for a, s in stats.arms.items() if a != "none") or 1
    for name in ("stable", "candidate", "none"):
        s = stats.arms.get(name)
        if s is None or (name == "none" and not s.requests):
            continue
        q = [s.quantile(x) for x in (0.5, 0.95, 0.99)]
        arms.add_row(
            name if name != "none" else "no answer",
            str(s.requests),
            f"{100 * s.requests / answered:.1f}%" if name != "none" else "",
            *[f"{v:.1f}" if v is not None else "-" for v in q],
            str(s.failures),
            str(s.fallbacks),
        )
    tenants = Table(title="candidate share per tenant (sticky by user)")
    for column in ("tenant", "tier", "region", "requests", "candidate"):
        tenants.add_column(column)
    for t in TENANTS:
        counts = stats.tenant_arms.get(t.name)
        n = sum(counts.values()) if counts else 0
        share = f"{100 * counts['candidate'] / n:.1f}%" if counts and n else "-"
        tenants.add_row(t.name, t.tier, t.region, str(n), share)
    return Group(arms, tenants)


def _deploy(config: dict[str, Any]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f, sort_keys=False)
    try:
        result = serve_deploy(f.name)
    finally:
        Path(f.name).unlink()
    if result.returncode != 0:
        raise RuntimeError(f"serve deploy failed: {result.stdout}{result.stderr}")


def follow(
    live: Live, stats: TrafficStats, title: str, done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    """Redraws the rollout and the traffic each second until ``done(state)`` or the time-out."""
    deadline = time.monotonic() + timeout_s
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            state = httpx.get(f"{SERVE_URL}/rollout", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            state = {}
        live.update(Group(render_status(state, now=time.time()), render(stats, title)))
        if state and done(state):
            break
        time.sleep(1)
    return state


def _write_report(out: Path, console: Console) -> None:
    response = httpx.get(
        f"{SERVE_URL}/admin/report", headers={"Authorization": f"Bearer {admin_token()}"}, timeout=120
    )
    if response.status_code != 200:
        console.print(f"[yellow]report not written: {response.status_code} {response.text[:200]}[/]")
        return
    import base64

    data = response.json()
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(data["markdown"])
    (out / "report.html").write_text(data["html"])
    for name, encoded in data["images"].items():
        (out / Path(name).name).write_bytes(base64.b64decode(encoded))
    console.print(f"post-rollout report: {out / 'report.html'}")


def run_demo(
    config_path: str = DEMO_CONFIG,
    *,
    stage_timeout_s: float = 900.0,
    concurrency: int = 8,
    keep: bool = False,
    console: Console | None = None,
) -> int:
    """Runs the demo; returns 0 when the good rollout was promoted, the bad one rolled back naming the
    gold tier (by a failing gate of its own, or among the worse segments), and every client request was
    answered 200."""
    console = console or Console()
    config = load_config(config_path)
    check_config(config, source=config_path)
    # A rollout identity that was deployed before resumes where it ended; every demo run is a new rollout.
    rollout = _ingress_rollout(config)
    rollout["rollout_id"] = f"{rollout.get('rollout_id') or 'demo'}-{time.strftime('%Y%m%d-%H%M%S')}"
    head = LocalHead()
    started_here = head.start()
    console.print(
        f"[bold]Ray head[/]: {'started' if started_here else 'already running'}; deploying {config_path}"
    )
    stop = threading.Event()
    stats = TrafficStats()
    traffic = threading.Thread(
        target=drive,
        args=(SERVE_URL,),
        kwargs={
            "requests": 10**7,
            "duration_s": 2 * stage_timeout_s + 120,
            "concurrency": concurrency,
            "stats": stats,
            "stop": stop,
            "feedback_rate": 1.0,
        },
        daemon=True,
    )
    ok = False
    try:
        _deploy(config)
        if not wait_for(f"{SERVE_URL}/healthz", 240):
            console.print("[red]/healthz did not answer 200 within 240 s[/]")
            return 1
        console.print(f"dashboard: {SERVE_URL}/dashboard  (open it to watch both rollouts side by side)")
        traffic.start()
        with Live(console=console, refresh_per_second=1) as live:
            good = follow(
                live,
                stats,
                "rollout of fraud-v2",
                lambda s: s.get("stage") in ("promoted", "rolled_back", "closed", "awaiting_review"),
                stage_timeout_s,
            )
        promoted = good.get("outcome") == "promoted"
        console.print(
            f"\n[bold]{'promoted' if promoted else 'NOT promoted'}[/]: fraud-v2 is at "
            f"{good.get('candidate_weight')}% after {len(good.get('events', []))} events"
        )
        _write_report(Path("reports") / "demo-good", console)

        # the model call's own p95 (server side), so the added time is the same share on any machine
        p95 = _stable_p95_ms(good) or stats.arms["stable"].quantile(0.95) or 50.0
        added = p95
        console.print(
            f"\n[bold]Deploying a bad candidate[/]: +{added:.0f} ms (stable's p95 in the model call) for "
            f"tier {BAD_TIER} only, from {BAD_FIRST_WEIGHT} %, judged every {BAD_JUDGE_INTERVAL_S:g} s"
        )
        _deploy(bad_candidate(config, added))
        with Live(console=console, refresh_per_second=1) as live:
            bad = follow(
                live,
                stats,
                f"bad candidate (+stable's p95 for {BAD_TIER})",
                lambda s: s.get("stage") in ("promoted", "rolled_back", "closed", "awaiting_review"),
                stage_timeout_s,
            )
        named = [g["segment"] for g in bad.get("gates", []) if g.get("verdict") == "FAIL"]
        rolled_back = bad.get("outcome") == "rolled_back"
        console.print(
            f"\n[bold]{'rolled back' if rolled_back else 'NOT rolled back'}[/]: failing gates in "
            f"{sorted(set(named)) or 'none'}; worst segments {bad.get('worse')}"
        )
        _write_report(Path("reports") / "demo-bad", console)
        stop.set()
        traffic.join(timeout=60)
        failed = stats.total - stats.statuses[200]
        console.print(f"[bold]{stats.total} requests, {failed} not answered 200[/]")
        # the tier is named by its own gate's FAIL, or by the segment screen when the overall gate (the
        # slower gold requests are ~45 % of them) failed first
        gold_named = any(BAD_TIER in s for s in [*named, *(bad.get("worse") or [])])
        ok = promoted and rolled_back and gold_named and not failed
        return 0 if ok else 1
    finally:
        stop.set()
        if started_here and not keep:
            console.print("stopping the Ray head this demo started")
            head.stop()
