"""The dashboard in a real headless Chromium (Debian's `chromium`, driven by Playwright) against the running
demo: its numbers match GET /rollout, its buttons do nothing without the admin token and roll back with it,
and during a bad-candidate rollout it names the worse segment at the top."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.admintoken import admin_token

ROOT = Path(__file__).resolve().parents[2]
CANARY = str(Path(sys.executable).parent / "canary")
TIERS = ("free", "pro", "gold")
# where the screenshot goes: the README's image is refreshed with CANARY_SCREENSHOT=docs/dashboard.png
SCREENSHOT_ENV = "CANARY_SCREENSHOT"


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what}; .ci/run installs it")
    pytest.skip(f"{what} (CI installs it)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    binary = shutil.which("chromium")
    if binary is None:
        _missing("Debian's chromium is not installed")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=binary, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            browser.close()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}: last={last!r}")


def deploy(tmp_path: Path, rollout: dict[str, Any], candidate: dict[str, Any] | None = None) -> None:
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    ingress = deployments["Ingress"]["user_config"]["rollout"]
    ingress.pop("candidate_weight", None)
    ingress.pop("shadow_percent", None)
    ingress.update(rollout)
    if candidate:
        deployments["candidate"].setdefault("user_config", {}).update(candidate)
    path = tmp_path / f"dashboard-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run(
        [CANARY, "deploy", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def auto(rollout_id: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "mode": "auto",
        "rollout_id": rollout_id,
        "owner": "ml-platform@example.com",
        "rollback_condition": "p95 +50% or errors above 1% in any tier",
        "stages": stages,
        "promotion_gates": {
            "error_rate": {"maximum": 0.01},
            "latency_p95_ms": {"maximum_regression_percent": 50},
        },
        "judge_segments": ["tier"],
    }


class Traffic:
    """Keyed requests across three tiers from 3 threads, bounded in time; loopback only."""

    def __init__(self, base: str, seconds: float = 240) -> None:
        self.base, self.stop, self.deadline = base, threading.Event(), time.monotonic() + seconds
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self.work, args=(i,), daemon=True) for i in range(3)]
        for t in self.threads:
            t.start()

    def work(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.base, timeout=30) as http:
            i = 0
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                i += 1
                headers = {"X-Routing-Key": f"d{seed}-{rng.getrandbits(32)}", "X-Tenant-Tier": TIERS[i % 3]}
                r = http.post(
                    "/predict", json={"features": [rng.random() for _ in range(30)]}, headers=headers
                )
                self.statuses.append(r.status_code)

    def end(self) -> list[int]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        return self.statuses


def settled(http: httpx.Client) -> dict[str, Any]:
    """GET /rollout once two reads a poll apart agree (traffic stopped, every window flushed)."""

    def same() -> dict[str, Any] | None:
        a = http.get("/rollout").json()
        time.sleep(1.5)
        b = http.get("/rollout").json()
        key = lambda s: (s["arms"]["stable"]["stats"]["requests"], s["shadow"]["mirrored"])  # noqa: E731
        return b if key(a) == key(b) else None

    return wait_until(same, 30, "telemetry to settle")


def number(text: str) -> float:
    found = re.search(r"-?[\d,]+(\.\d+)?", text)
    assert found, text
    return float(found.group(0).replace(",", ""))


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A page on the dashboard, with a list that collects the script errors it throws."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{url}/dashboard")
    return page, errors


def cell(page: Any, arm: str, metric: str) -> str:
    return page.locator(f'#arms td[data-arm="{arm}"][data-metric="{metric}"]').inner_text()


def test_the_page_matches_the_api_and_acts_only_with_the_token(demo, browser, tmp_path):
    http = httpx.Client(base_url=demo, timeout=30)
    long = [
        {"shadow_percent": 100, "min_duration_s": 3600, "min_requests": 100},
        {"weight": 50, "min_duration_s": 3600, "min_requests": 100},
        {"weight": 100, "min_duration_s": 60, "min_requests": 100},
    ]
    deploy(tmp_path, auto(f"dash-{uuid.uuid4().hex[:8]}", long))
    wait_until(lambda: http.get("/rollout").json().get("stage") == "shadow", 60, "shadow stage")
    traffic = Traffic(demo, seconds=60)
    wait_until(lambda: http.get("/rollout").json()["shadow"]["completed"] >= 60, 60, "mirrored answers")
    assert set(traffic.end()) == {200}
    state = settled(http)

    page, errors = open_page(browser, demo)
    stable_requests = state["arms"]["stable"]["stats"]["requests"]
    page.wait_for_function(
        f"""() => {{
            const td = document.querySelector('#arms td[data-arm="stable"][data-metric="requests"]');
            return td && td.textContent.replace(/,/g, '') === '{stable_requests}';
        }}""",
        timeout=15_000,
    )
    # the figures on the page are the API's
    assert page.locator("#stage").inner_text().lower() == "shadow"
    assert number(page.locator("#shadow-rate").inner_text()) == state["shadow_percent"] == 100
    assert number(page.locator("#weight").inner_text()) == state["candidate_weight"] == 0
    stats = state["arms"]["stable"]["stats"]
    shadow = state["shadow"]["stats"]
    assert number(cell(page, "shadow", "requests")) == shadow["requests"]
    for arm, side in (("stable", stats), ("shadow", shadow)):
        shown = number(cell(page, arm, "latency_p95_ms"))
        assert shown == pytest.approx(side["latency_ms"]["p95"], rel=0.01, abs=0.01), (arm, shown)
    assert (
        number(page.locator('#shadow dd[data-shadow="mirrored"]').inner_text()) == state["shadow"]["mirrored"]
    )
    for tier in TIERS:
        assert page.locator(f'#segments tr[data-segment="tier={tier}"]').count() == 1
    assert page.locator("#gates tr[data-gate]").count() >= 1  # every judged gate × segment is listed

    # without the token the buttons are disabled: a click does nothing
    rollback = page.locator('#admin button[data-action="rollback"]')
    assert rollback.is_disabled()
    rollback.click(force=True)
    time.sleep(2.5)
    assert http.get("/rollout").json()["stage"] == "shadow"
    # a wrong token is refused by the server and changes nothing
    page.fill("#token", "not-the-token")
    page.fill("#reason", "checking the dashboard")
    rollback.click()
    page.wait_for_function("() => /refused/.test(document.getElementById('admin-result').textContent)")
    assert http.get("/rollout").json()["stage"] == "shadow"
    # with the token it rolls back: on the page and in the API
    page.fill("#token", admin_token())
    rollback.click()
    page.wait_for_function(
        "() => document.getElementById('stage').textContent.toLowerCase() === 'rolled back'", timeout=15_000
    )
    after = http.get("/rollout").json()
    assert after["stage"] == "rolled_back" and after["candidate_weight"] == 0
    assert any(e["actor"] == "dashboard" and e["reason"] == "checking the dashboard" for e in after["events"])
    assert not errors, errors
    page.close()


def test_a_bad_tier_is_named_at_the_top_of_the_page(demo, browser, tmp_path):
    http = httpx.Client(base_url=demo, timeout=30)
    slow_gold = {"faults": {"latency_ms": 250, "segment": {"X-Tenant-Tier": "gold"}}}
    # the faulty build goes out with no traffic first, then its rollout starts (it judges that build alone)
    deploy(tmp_path, {"mode": "manual", "candidate_weight": 0, "shadow_percent": 0}, slow_gold)
    wait_until(lambda: http.get("/rollout").json().get("stage") == "manual", 60, "manual routing")

    def gold_is_slow() -> bool:  # an operator's probe of the candidate alone: its new config has applied
        probe = {"X-Canary-Force-Arm": "candidate", "X-Tenant-Tier": "gold"}
        started = time.monotonic()
        r = http.post(
            "/predict",
            json={"features": [0.1] * 30},
            headers={**probe, "Authorization": f"Bearer {admin_token()}"},
        )
        return r.status_code == 200 and time.monotonic() - started >= 0.25

    wait_until(gold_is_slow, 60, "the candidate's gold fault")
    fast = [
        {"shadow_percent": 100, "min_duration_s": 5, "min_requests": 60},
        {"weight": 30, "min_duration_s": 5, "min_requests": 60},
        {"weight": 100, "min_duration_s": 5, "min_requests": 60},
    ]
    traffic = Traffic(demo, seconds=180)
    page, errors = open_page(browser, demo)
    try:
        deploy(tmp_path, auto(f"dash-gold-{uuid.uuid4().hex[:8]}", fast), slow_gold)
        state = wait_until(
            lambda: (s := http.get("/rollout").json())["stage"] == "rolled_back" and s,
            180,
            "rollback",
            every=1,
        )
    finally:
        statuses = traffic.end()
    assert statuses and set(statuses) == {200}
    # Gold is a third of the traffic, so the global p95 may fail before gold has the samples to be named
    # (see tests/integration/test_rollout.py); either way the page leads with gold and blames no other tier.
    assert set(state["worse"]) <= {"tier=gold"}
    try:
        page.wait_for_function(
            "() => /Rolled back.*tier=gold/.test(document.getElementById('verdict').textContent)",
            timeout=15_000,
        )
    except Exception as exc:
        raise AssertionError((page.locator("#verdict").inner_text(), errors, state["gates"])) from exc
    # worst first: the gold tier heads the segment table, marked worse once judged so; the other tiers are not
    first = page.locator("#segments tbody tr").first
    assert first.get_attribute("data-segment") == "tier=gold"
    assert ("worse" in (first.get_attribute("class") or "")) == ("tier=gold" in state["worse"])
    for tier in ("free", "pro"):
        row = page.locator(f'#segments tr[data-segment="tier={tier}"]')
        assert "worse" not in (row.get_attribute("class") or "")
    page.wait_for_timeout(5500)  # the charts' next refresh, with the rollback marked
    assert page.locator("#chart-latency path").count() >= 2
    shot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "dashboard.png")
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    assert not errors, errors
    page.close()


def test_a_global_fail_no_tier_explains_yet_shows_the_largest_p95_ratio_as_an_estimate(demo, browser):
    """The page's words when the rollback came from the global test alone: the real GET /rollout, reshaped
    into that state and served to the page in place of the live one."""
    live = httpx.get(f"{demo}/rollout", timeout=30).json()
    stats = live["arms"]["stable"]["stats"]

    def arm(requests: int, p95: float) -> dict[str, Any]:
        return {**stats, "requests": requests, "latency_ms": {"p50": p95 / 2, "p95": p95, "p99": p95 * 1.2}}

    sh = {**live["shadow"], "stats": arm(0, 0.0)}
    ratios = {"free": 1.02, "pro": 0.97, "gold": 21.0}
    state = {
        **live,
        "stage": "rolled_back",
        "candidate_weight": 0,
        "worse": [],
        "gates": [
            {
                "gate": "latency_p95_ms",
                "segment": "all",
                "verdict": "FAIL",
                "evidence": {"rule": "p95", "reason": "candidate p95 above 1.5x stable's"},
            },
            *(
                {"gate": "latency_p95_ms", "segment": f"tier={t}", "verdict": "INCONCLUSIVE", "evidence": {}}
                for t in ratios
            ),
        ],
        "arms": {
            **live["arms"],
            "stable": {**live["arms"]["stable"], "stats": arm(180, 12)},
            "candidate": {**live["arms"]["candidate"], "stats": arm(39, 30)},
        },
        "segments": [
            {"label": "tier", "value": t, "stable": arm(60, 12), "candidate": arm(13, 12 * r), "shadow": sh}
            for t, r in ratios.items()
        ]
        # one endpoint holds every request, with a larger ratio: it says nothing of where, so it is no lead
        + [
            {
                "label": "endpoint",
                "value": "/predict",
                "stable": arm(180, 10),
                "candidate": arm(39, 300),
                "shadow": sh,
            }
        ],
    }
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.route(re.compile(r".*/rollout$"), lambda route: route.fulfill(json=state))
    page.goto(f"{demo}/dashboard")
    page.wait_for_function("() => /Rolled back/.test(document.getElementById('verdict').textContent)")
    verdict = page.locator("#verdict").inner_text()
    assert "failed overall; largest p95 ratio at tier=gold (×21.00, an estimate" in verdict, verdict
    assert "is worse at" not in verdict
    rows = page.locator("#segments tbody tr")
    assert rows.first.get_attribute("data-segment") == "tier=gold"
    assert all("worse" not in (rows.nth(i).get_attribute("class") or "") for i in range(rows.count()))
    assert not errors, errors
    page.close()


def test_the_page_says_what_the_candidate_is_compared_with(demo, browser):
    live = httpx.get(f"{demo}/rollout", timeout=30).json()
    assert live["baseline"] == {"mode": "all"}  # the demo's default
    matched = {"mode": "matched", "ratio": 3.0, "stable_requests": 5400, "candidate_requests": 1800}
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.route(re.compile(r".*/rollout$"), lambda route: route.fulfill(json={**live, "baseline": matched}))
    page.goto(f"{demo}/dashboard")
    page.wait_for_function("() => /compared with/.test(document.getElementById('facts').textContent)")
    facts = page.locator("#facts").inner_text()
    assert "stable at the candidate's pace, 3 answers per candidate answer (5,400 / 1,800 so far)" in facts, (
        facts
    )
    assert not errors, errors
    page.close()
