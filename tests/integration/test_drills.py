"""Fault drills under continuous load (loopback, bounded): a replica or the controller killed, a rollback,
a bad config, an OOMing candidate. Each drill counts requests sent, failed (an answer other than 2xx) and
lost (no answer at all), asserts what users must never see, and adds its row to a results file
(`$CANARY_DRILL_RESULTS`, else a temporary file) that the README's reliability table is copied from."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from conftest import ADMIN_TOKEN, STORE, Canary, deployment, wait_until
from ray import serve

from rollout.controller import NAMESPACE, controller_name

TIERS = ("free", "pro", "gold")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", autouse=True)
def drill_results(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield
    path = Path(os.environ.get("CANARY_DRILL_RESULTS") or tmp_path_factory.mktemp("drills") / "drills.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"drills": RESULTS, "written": time.time()}, indent=2) + "\n")


class Load:
    """Keyed requests from 4 threads until stopped (at most `seconds`): every answer's start time, status
    and arm; a request without an answer (connection error, client time-out) is lost."""

    def __init__(self, canary: Canary, seconds: float = 180, prefix: str = "") -> None:
        self.url, self.stop = canary.url + prefix, threading.Event()
        self.deadline = time.monotonic() + seconds
        self.answers: list[tuple[float, int, str]] = []  # (start, status, arm)
        self.lost = 0
        self.threads = [threading.Thread(target=self.work, args=(i,), daemon=True) for i in range(4)]
        for t in self.threads:
            t.start()

    def work(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=30) as http:
            i = 0
            while not self.stop.is_set() and time.monotonic() < self.deadline:
                i += 1
                headers = {"X-Routing-Key": f"d{seed}-{rng.getrandbits(40):x}", "X-Tenant-Tier": TIERS[i % 3]}
                started = time.time()
                try:
                    r = http.post(f"{self.url}/predict", json={"features": [0.1] * 30}, headers=headers)
                except httpx.HTTPError:
                    self.lost += 1
                    continue
                self.answers.append((started, r.status_code, r.headers.get("x-canary-arm", "")))

    def end(self, drill: str, **extra: Any) -> dict[str, Any]:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        failed = sum(1 for _, status, _ in self.answers if status != 200)
        row = {"sent": len(self.answers) + self.lost, "failed": failed, "lost": self.lost, **extra}
        RESULTS[drill] = row
        return row


def auto(canary: Canary, rollout_id: str, gates: dict[str, Any], **extra: Any) -> dict[str, Any]:
    config = canary.edited(
        mode="auto",
        rollout_id=f"{rollout_id}-{random.getrandbits(32):x}",
        owner="sre@example.com",
        rollback_condition="any gate fails",
        stages=[
            {"weight": 50, "min_duration_s": 3600, "min_requests": 100},
            {"weight": 100, "min_duration_s": 3600, "min_requests": 100},
        ],
        promotion_gates=gates,
        **extra,
    )
    deployment(config, "Ingress")["user_config"]["rollout"].pop("candidate_weight", None)
    return config


def at_canary(canary: Canary) -> dict[str, Any]:
    return wait_until(lambda: (s := canary.rollout())["stage"] == "canary" and s, 60, what="canary at 50 %")


def replica_pids(canary: Canary, arm: str, calls: int = 30) -> set[int]:
    """The pids of the arm's replicas that answer (Serve spreads the info calls over them)."""
    return {canary.replica_info(arm)["pid"] for _ in range(calls)}


def test_drill_candidate_replica_killed_mid_canary(canary: Canary) -> None:
    canary.deploy(auto(canary, "kill-candidate", {"replica_restarts": {"maximum": 0}}))
    at_canary(canary)
    load = Load(canary)
    time.sleep(3)
    pid = canary.replica_info("candidate")["pid"]
    os.kill(pid, signal.SIGKILL)
    state = wait_until(
        lambda: (s := canary.rollout())["stage"] == "rolled_back" and s, 120, every=1, what="the gate reacts"
    )
    time.sleep(2)
    row = load.end("candidate replica SIGKILLed at 50 %", restarts=state["restarts"].get("candidate", 0))
    assert row["sent"] > 100 and row["failed"] == 0 and row["lost"] == 0, row
    assert row["restarts"] >= 1
    assert any(g["gate"] == "replica_restarts" and g["verdict"] == "FAIL" for g in state["gates"])


def test_drill_controller_killed_routing_goes_on_and_it_resumes(canary: Canary) -> None:
    canary.deploy(
        auto(
            canary,
            "kill-controller",
            {"error_rate": {"maximum": 0.01}, "human_review_score": {"minimum_delta": -0.1}},
        )
    )
    at_canary(canary)
    load = Load(canary)
    with httpx.Client(base_url=canary.url, timeout=30) as http:
        scored = []
        for i in range(20):  # feedback the controller must keep
            r = http.post("/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"fb{i}"})
            body = {"request_id": r.headers["x-request-id"], "metric": "human_review_score", "value": 0.9}
            assert http.post("/feedback", json=body).status_code == 200
            scored.append(r.headers["x-request-id"])
    time.sleep(6)  # persisted (every 5 s)
    before = canary.rollout()
    actor = ray.get_actor(controller_name("canary"), namespace=NAMESPACE)
    pid = ray.get(actor.ready.remote(), timeout=30)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    time.sleep(2)
    # while it is down the Ingress keeps its last table: the candidate still serves its half
    during = [arm for start, _, arm in list(load.answers) if start > killed_at]
    after = wait_until(
        lambda: ray.get(actor.ready.remote(), timeout=30) != pid and canary.rollout(),
        120,
        every=1,
        what="back",
    )
    row = load.end("rollout controller SIGKILLed at 50 %")
    assert row["failed"] == 0 and row["lost"] == 0, row
    assert "candidate" in during and "stable" in during
    for key in ("stage", "candidate_weight", "shadow_percent", "rollout_key"):
        assert after[key] == before[key], key
    assert after["events_total"] >= before["events_total"]
    with sqlite3.connect(f"file:{STORE['path']}?mode=ro", uri=True) as db:
        kept = {rid for (rid,) in db.execute("SELECT request_id FROM feedback")}
    assert set(scored) <= kept  # no feedback lost


def test_drill_one_of_two_stable_replicas_killed(canary: Canary) -> None:
    config = canary.edited(candidate_weight=0)
    deployment(config, "stable")["num_replicas"] = 2
    canary.deploy(config)
    pids = wait_until(
        lambda: len(p := replica_pids(canary, "stable")) == 2 and p, 180, every=1, what="two stable replicas"
    )
    load = Load(canary)
    time.sleep(3)
    os.kill(min(pids), signal.SIGKILL)
    time.sleep(15)
    row = load.end("one of two stable replicas SIGKILLed")
    assert row["sent"] > 100 and row["failed"] == 0 and row["lost"] == 0, row


def test_drill_rollback_under_load_stops_candidate_answers_within_the_push(canary: Canary) -> None:
    canary.deploy(auto(canary, "rollback", {"error_rate": {"maximum": 0.01}}))
    at_canary(canary)
    load = Load(canary)
    time.sleep(4)
    r = canary.http.post("/rollout/rollback", json={"reason": "drill", "actor": "sre"}, headers=ADMIN)
    assert r.status_code == 200, r.text
    decided = time.time()
    time.sleep(4)
    state = canary.rollout()
    bound_s = max(0.5, 3 * (state["propagation_ms"]["p99"] or 0) / 1000)
    late = [start for start, _, arm in list(load.answers) if arm == "candidate" and start > decided + bound_s]
    row = load.end("rollback at 50 % under load", late_candidate_answers=len(late), bound_ms=bound_s * 1000)
    assert state["stage"] == "rolled_back" and state["candidate_weight"] == 0
    assert row["failed"] == 0 and row["lost"] == 0 and not late, row


BAD_EDITS = [
    ({"candidate_weight": 120}, "candidate_weight"),
    ({"promotion_gates": {"error_rate": {"maximum": "lots"}}}, "error_rate"),
    ({"unknown_key": 1}, "unknown_key"),
]


def test_drill_bad_configs_mid_rollout_are_refused_and_the_rollout_untouched(canary: Canary) -> None:
    good = auto(canary, "bad-config", {"error_rate": {"maximum": 0.01}})
    canary.deploy(good)
    before = at_canary(canary)
    for edit, key in BAD_EDITS:
        load = Load(canary)
        canary.deploy(good)  # the good one again: clears the previous refusal
        wait_until(lambda: not canary.rollout()["config_error"], 60, what="no refusal")
        canary.deploy(canary.edited(**edit))  # the running config with one bad edit
        state = wait_until(lambda: (s := canary.rollout())["config_error"] and s, 60, what="refused")
        time.sleep(2)
        row = load.end(f"bad config mid-rollout ({key})")
        assert key in state["config_error"]
        for k in ("stage", "candidate_weight", "rollout_key", "mode"):
            assert state[k] == before[k], k
        assert row["failed"] == 0 and row["lost"] == 0, row


def test_drill_candidate_ooms_are_answered_by_stable_and_rolled_back(canary: Canary) -> None:
    config = auto(canary, "oom", {"gpu_oom_events": {"maximum": 0}})
    deployment(config, "candidate")["user_config"]["faults"] = {"oom_rate": 1.0}
    deployment(config, "candidate")["user_config"]["max_consecutive_ooms"] = 1000
    load = Load(canary)
    canary.deploy(config)
    state = wait_until(
        lambda: (s := canary.rollout())["stage"] == "rolled_back" and s, 120, every=1, what="OOM rollback"
    )
    row = load.end("candidate OOMs on every batch", oom_events=state["oom_events"].get("candidate", 0))
    assert row["failed"] == 0 and row["lost"] == 0, row
    assert row["oom_events"] >= 1
    assert any(g["gate"] == "gpu_oom_events" and g["verdict"] == "FAIL" for g in state["gates"])


def test_drill_store_write_lock_held_elsewhere_answers_and_rollback_go_on(canary: Canary) -> None:
    """Another process holds the SQLite store's write lock (a backup, a stuck tool) mid-canary: every write
    of the controller waits out the busy timeout and fails, again and again. Answers, GET /rollout and an
    operator's rollback must not wait for it, and everything is written once the lock is let go."""
    canary.deploy(auto(canary, "store-lock", {"error_rate": {"maximum": 0.01}}))
    key = at_canary(canary)["rollout_key"]
    load = Load(canary)
    time.sleep(3)
    lock = sqlite3.connect(STORE["path"], isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")  # the write lock; readers go on (WAL)
        held = time.monotonic()
        stuck = wait_until(
            lambda: not (s := canary.rollout())["store"]["ok"] and s, 60, what="the store failing"
        )
        r = canary.http.post("/rollout/rollback", json={"reason": "drill", "actor": "sre"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        decided = time.time()
        time.sleep(4)
        state = canary.rollout()
        assert state["stage"] == "rolled_back" and not state["store"]["ok"]
        held_s = time.monotonic() - held
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    bound_s = max(0.5, 3 * (state["propagation_ms"]["p99"] or 0) / 1000)
    late = [start for start, _, arm in list(load.answers) if arm == "candidate" and start > decided + bound_s]
    written = wait_until(
        lambda: (s := canary.rollout())["store"]["ok"] and s["store"]["unstored"] == 0 and s,
        60,
        what="everything written",
    )
    row = load.end(
        "the store's write lock held by another process mid-canary",
        held_s=round(held_s, 1),
        late_candidate_answers=len(late),
        store_error=stuck["store"]["error"],
    )
    assert row["failed"] == 0 and row["lost"] == 0 and not late, row
    with sqlite3.connect(f"file:{STORE['path']}?mode=ro", uri=True) as db:
        kinds = [k for (k,) in db.execute("SELECT kind FROM events WHERE key = ? ORDER BY seq", (key,))]
    assert kinds == [e["kind"] for e in written["events"]] and kinds[-1] == "rolled_back"


def fill(path: Path) -> None:
    """Writes zeros until the filesystem is full."""
    with path.open("wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()


def test_drill_store_unwritable_freezes_promotion_and_recovers(canary: Canary, tmp_path: Path) -> None:
    """A second application whose store lives on its own small filesystem, filled up mid-rollout (a full
    disk; root ignores file modes, and a mount with files open for writing cannot be made read-only)."""
    mount = tmp_path / "store-fs"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"this drill needs to mount a tmpfs (root in CI): {mounted.stderr.decode()[:200]}")
    drill = copy.deepcopy(canary.config["applications"][0])
    drill.update(name="drill", route_prefix="/drill")
    rollout = deployment({"applications": [drill]}, "Ingress")["user_config"]["rollout"]
    rollout.pop("candidate_weight", None)
    rollout.update(
        mode="auto",
        rollout_id=f"store-{random.getrandbits(32):x}",
        owner="sre@example.com",
        rollback_condition="any gate fails",
        stages=[
            {"shadow_percent": 100, "min_duration_s": 3, "min_requests": 40},
            {"weight": 50, "min_duration_s": 3, "min_requests": 40},
            {"weight": 100, "min_duration_s": 3, "min_requests": 40},
        ],
        promotion_gates={"error_rate": {"maximum": 0.05}},
        store={"path": str(mount / "rollout.db")},
    )
    both = copy.deepcopy(canary.config)
    both["applications"].append(drill)
    http = httpx.Client(base_url=f"{canary.url}/drill", timeout=30)
    load = None
    try:
        canary.deploy(both)
        wait_until(lambda: serve.status().applications["drill"].status == "RUNNING", 240, what="drill app")
        wait_until(lambda: http.get("/rollout").json().get("stage") == "shadow", 120, what="shadow stage")
        load = Load(canary, prefix="/drill")
        fill(mount / "filler")
        broken = wait_until(
            lambda: not (s := http.get("/rollout").json())["store"]["ok"] and s, 120, what="the store failing"
        )
        time.sleep(10)  # over three times what every stage needs: nothing may move
        frozen = http.get("/rollout").json()
        assert (frozen["stage"], frozen["stage_index"]) == (broken["stage"], broken["stage_index"])
        assert any(g["gate"] == "store" and g["verdict"] == "ERROR" for g in frozen["gates"])
        (mount / "filler").unlink()
        wait_until(lambda: http.get("/rollout").json()["store"]["ok"], 60, what="store back")
        done = wait_until(
            lambda: (s := http.get("/rollout").json())["stage"] == "promoted" and s,
            180,
            every=1,
            what="promoted",
        )
        row = load.end("store disk full mid-rollout, then freed", frozen_s=10, outcome=done["stage"])
        load = None
        assert row["failed"] == 0 and row["lost"] == 0, row
    finally:
        if load is not None:
            load.end("store disk full mid-rollout, then freed")
        http.close()
        canary.deploy(canary.config)  # the drill app removed
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(controller_name("drill"), namespace=NAMESPACE), no_restart=True)
        subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)
