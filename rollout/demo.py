"""`canary demo`: the main job. Brings up a local Ray with the demo config, sends demo traffic from several
tenants, moves the candidate's weight by editing the config and deploying it again, and shows the live split
and latency per arm in the terminal.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from rollout.cluster import SERVE_URL, LocalHead, serve_deploy, wait_for
from rollout.configfile import check_config, load_config
from rollout.traffic import TENANTS, TrafficStats, drive


def with_weight(config: dict[str, Any], weight: float) -> dict[str, Any]:
    """A copy of a canary config whose Ingress ``rollout.candidate_weight`` is ``weight``."""
    config = copy.deepcopy(config)
    for app in config.get("applications", []):
        for dep in app.get("deployments") or []:
            if dep.get("name") == "Ingress":
                dep.setdefault("user_config", {}).setdefault("rollout", {})["candidate_weight"] = weight
    return config


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


def run_demo(
    config_path: str,
    *,
    phase_s: float = 20.0,
    requests: int = 20_000,
    concurrency: int = 8,
    second_weight: float = 50.0,
    keep: bool = False,
    console: Console | None = None,
) -> int:
    """Runs the demo; returns a process exit code (0 when every request was answered 2xx)."""
    console = console or Console()
    config = load_config(config_path)
    check_config(config, source=config_path)
    head = LocalHead()
    started_here = head.start()
    console.print(
        f"[bold]Ray head[/]: {'started' if started_here else 'already running'}; deploying {config_path}"
    )
    failed = 0
    try:
        result = serve_deploy(config_path)
        if result.returncode != 0:
            console.print(result.stdout + result.stderr)
            return 1
        if not wait_for(f"{SERVE_URL}/healthz", 240):
            console.print("[red]/healthz did not answer 200 within 240 s[/]")
            return 1
        weight = httpx.get(f"{SERVE_URL}/rollout").json()["candidate_weight"]
        for phase, target in enumerate((None, second_weight)):
            if target is not None:
                console.print(f"\n[bold]Editing candidate_weight {weight} → {target} and deploying again[/]")
                with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
                    yaml.safe_dump(with_weight(config, target), f, sort_keys=False)
                t0 = time.monotonic()
                result = serve_deploy(f.name)
                Path(f.name).unlink()
                while httpx.get(f"{SERVE_URL}/rollout").json()["candidate_weight"] != target:
                    time.sleep(0.1)
                console.print(
                    f"routing follows {time.monotonic() - t0:.1f}s after `serve deploy` started "
                    "(no model replica restarted)"
                )
                weight = target
            title = f"candidate_weight {weight}%"
            with Live(console=console, refresh_per_second=2) as live:
                stats = drive(
                    SERVE_URL,
                    requests=requests // 2,
                    duration_s=phase_s,
                    concurrency=concurrency,
                    seed=phase,
                    on_tick=lambda s, title=title: live.update(render(s, title)),
                )
                live.update(render(stats, title))
            failed += stats.total - stats.statuses[200]
        console.print(
            f"\n[bold]{'all requests answered 200' if not failed else f'{failed} requests failed'}[/]"
        )
        return 0 if not failed else 1
    finally:
        if started_here and not keep:
            console.print("stopping the Ray head this demo started")
            head.stop()
