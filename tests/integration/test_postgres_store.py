"""The rollout store on a real PostgreSQL server: the controller on Ray writes there, and a controller killed
with SIGKILL comes back from it, at the same stage with the same events. The URL's password shows nowhere.

A second application, ``canary-pg`` under ``/pg``, runs beside the session's ``canary`` app: a controller
keeps the store it was created with, so the PostgreSQL store needs an application (and controller) of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import ray
from conftest import ADMIN_TOKEN, Canary, wait_until
from postgres_server import PostgresServer, postgres_server
from ray import serve
from ray.serve.schema import ServeDeploySchema

from rollout.controller import NAMESPACE, controller_name, find_controller
from serving.config import IngressConfig, validate_section

APP = "canary-pg"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LONG = [
    {"shadow_percent": 100, "min_duration_s": 3600, "min_requests": 40},
    {"weight": 30, "min_duration_s": 3600, "min_requests": 40},
    {"weight": 100, "min_duration_s": 3600, "min_requests": 40},
]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    yield from postgres_server()


def with_postgres_app(config: dict[str, Any], url: str) -> dict[str, Any]:
    """The session's config plus a copy of its application named ``canary-pg``, with its store at ``url``."""
    config = copy.deepcopy(config)
    app = copy.deepcopy(config["applications"][0])
    app["name"], app["route_prefix"] = APP, "/pg"
    ingress = next(d for d in app["deployments"] if d["name"] == "Ingress")
    rollout = ingress["user_config"]["rollout"]
    rollout.pop("candidate_weight", None)
    rollout.update(
        mode="auto",
        rollout_id="pg-kill-1",
        owner="ml-platform@example.com",
        rollback_condition="errors above 1%",
        stages=LONG,
        promotion_gates={"error_rate": {"maximum": 0.01}},
        store={"url": url},
    )
    validate_section(IngressConfig, ingress["user_config"], source="the canary-pg Ingress user_config")
    config["applications"].append(app)
    return config


def deploy(config: dict[str, Any]) -> None:
    serve.context._get_global_client().deploy_apps(ServeDeploySchema.model_validate(config))


@pytest.fixture(scope="module")
def pg_deployed(canary_app: Canary, postgres: PostgresServer) -> Iterator[httpx.Client]:
    """The ``canary-pg`` application, deployed once for the module (its model replicas take ~15 s)."""
    deploy(with_postgres_app(canary_app.config, postgres.create_database()))
    http = httpx.Client(base_url=f"{canary_app.url}/pg", timeout=30)
    try:
        wait_until(lambda: serve.status().applications[APP].status == "RUNNING", 240, what=f"{APP} RUNNING")
        yield http
    finally:
        http.close()
        deploy(canary_app.config)  # the session's app alone again
        with contextlib.suppress(ValueError):  # detached: it would outlive the app and the server
            ray.kill(ray.get_actor(controller_name(APP), namespace=NAMESPACE), no_restart=True)


@pytest.fixture
def pg_app(
    canary_app: Canary, pg_deployed: httpx.Client, postgres: PostgresServer
) -> tuple[httpx.Client, str]:
    """Each test on a database of its own: the config deployed again with a new store URL (and one Ingress
    replica, whatever the last test left), so a controller on that store runs the rollout from its start."""
    url = postgres.create_database()
    deploy(with_postgres_app(canary_app.config, url))
    wait_until(
        lambda: (
            (found := find_controller(APP)) is not None
            and ray.get(found.describe.remote(), timeout=30)["store"] == url
            and (s := pg_deployed.get("/rollout").json()).get("stage") == "shadow"
            and s["store"]["ok"]
            and s["config_pending"] is None
        ),
        120,
        what="the rollout at shadow on a new database",
    )
    return pg_deployed, url


def test_postgres_store_controller_killed_with_sigkill_resumes_from_it(
    pg_app: tuple[httpx.Client, str], postgres: PostgresServer
) -> None:
    http, url = pg_app
    for i in range(20):
        assert http.post(
            "/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"k{i}"}
        ).is_success
    paused = http.post("/rollout/pause", json={"reason": "INC-7", "actor": "alice"}, headers=ADMIN)
    assert paused.status_code == 200, paused.text
    before = http.get("/rollout").json()
    assert before["stage"] == "paused"

    # the state, the events and the request log are in PostgreSQL, not in a file
    with psycopg.connect(url) as conn:
        state = conn.execute("SELECT state FROM rollouts WHERE key = %s", (before["rollout_key"],)).fetchone()
        assert state is not None and json.loads(state[0])["phase"] == "paused"
        events = conn.execute(
            "SELECT COUNT(*) FROM events WHERE key = %s", (before["rollout_key"],)
        ).fetchone()
        assert events[0] == before["events_total"] >= 2
        wait_until(
            lambda: conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] >= 20, 30, what="request log"
        )

    actor = ray.get_actor(controller_name(APP), namespace=NAMESPACE)
    pid = ray.get(actor.ready.remote(), timeout=30)
    os.kill(pid, signal.SIGKILL)
    after = wait_until(
        lambda: (
            ray.get(actor.ready.remote(), timeout=30) != pid
            and (s := http.get("/rollout").json()).get("stage")
            and s
        ),
        120,
        every=1,
        what="controller back",
    )
    assert after["rollout_key"] == before["rollout_key"]
    assert after["stage"] == "paused" and after["candidate_weight"] == before["candidate_weight"] == 0
    assert after["events_total"] >= before["events_total"]
    assert [e["seq"] for e in after["events"]][: len(before["events"])] == [
        e["seq"] for e in before["events"]
    ]
    assert ("paused", "alice", "INC-7") in [
        (e["kind"], e.get("actor"), e.get("reason")) for e in after["events"]
    ]
    backend, location = ray.get(
        actor.__ray_call__.remote(lambda self: (self._core.store.backend, self._core.store.location)),
        timeout=30,
    )
    assert backend == "postgresql" and location == url.replace(postgres.password, "***")

    # the password is in no answer and in no log of this Ray session
    for path in ("/rollout", "/metrics", "/rollout/series"):
        assert postgres.password not in http.get(path).text, path
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    leaked = [p.name for p in logs.rglob("*") if p.is_file() and postgres.password.encode() in p.read_bytes()]
    assert leaked == []


def test_a_controller_restarting_while_its_store_is_down_stays_up_and_resumes_once_it_is_back(
    pg_app: tuple[httpx.Client, str], postgres: PostgresServer
) -> None:
    """The controller crashes while PostgreSQL refuses connections (a failover, maintenance). Ray restarts
    it; it must stay up and say why it cannot resume, the answers go on on the last table, and once the
    database is back it resumes the same rollout. Before, its constructor opened the store: it raised, Ray
    gave the actor up for dead, its name was gone, and no Ingress created another until a redeploy."""
    http, url = pg_app
    database = url.rsplit("/", 1)[1]
    before = http.get("/rollout").json()
    actor = ray.get_actor(controller_name(APP), namespace=NAMESPACE)
    pid = ray.get(actor.ready.remote(), timeout=30)
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,)
        )
        try:
            os.kill(pid, signal.SIGKILL)
            down = wait_until(
                lambda: (
                    (r := http.get("/rollout", timeout=15)).status_code == 503
                    and "store is not open yet" in r.text
                    and r.json()
                ),
                90,
                what="GET /rollout saying the restarted controller cannot open its store",
            )
            assert "not currently accepting connections" in down["detail"], down
            assert postgres.password not in json.dumps(down) and "Traceback" not in json.dumps(down)
            assert ray.get(actor.ready.remote(), timeout=30) != pid  # up, under its name, not dead
            for i in range(10):  # answers on the last table
                assert http.post(
                    "/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"d{i}"}, timeout=10
                ).is_success
            refused = http.post(
                "/rollout/rollback", json={"reason": "db down", "actor": "sre"}, headers=ADMIN, timeout=30
            )
            assert refused.status_code == 503 and refused.json()["error"] == "controller_starting"
        finally:
            admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
    after = wait_until(
        lambda: (r := http.get("/rollout", timeout=15)).status_code == 200 and r.json(),
        60,
        what="the controller resumed once the database was back",
    )
    assert after["rollout_key"] == before["rollout_key"] and after["stage"] == before["stage"]
    assert after["events_total"] >= before["events_total"] and after["config_pending"] is None

    # killed for good (by hand, or its restarts spent): an Ingress replica creates it again
    ray.kill(ray.get_actor(controller_name(APP), namespace=NAMESPACE), no_restart=True)
    again = wait_until(
        lambda: (
            (found := find_controller(APP)) is not None
            and found._actor_id != actor._actor_id
            and (r := http.get("/rollout", timeout=15)).status_code == 200
            and r.json()
        ),
        90,
        what="the controller created again",
    )
    assert again["rollout_key"] == before["rollout_key"] and again["stage"] == before["stage"]


def test_a_postgres_store_that_hangs_holds_up_neither_the_answers_nor_a_rollback(
    canary_app: Canary, pg_app: tuple[httpx.Client, str]
) -> None:
    """Another session holds an ACCESS EXCLUSIVE lock on the rollouts table (a migration, a stuck
    maintenance job): every statement of the controller waits for it, with no time-out of its own. The
    controller must go on answering and acting (its store has a thread of its own), show the hang, keep
    promotion frozen, and write everything, in order, once the lock is let go. A config deployed meanwhile
    cannot be checked against the store; the Ingress sends the new rollout's traffic to stable and offers
    the config again until the controller takes it."""
    http, url = pg_app
    key = http.get("/rollout").json()["rollout_key"]
    locker = psycopg.connect(url)
    try:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE rollouts IN ACCESS EXCLUSIVE MODE")
        for i in range(20):  # answers never needed the store
            assert http.post(
                "/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"h{i}"}, timeout=10
            ).is_success
        hung = wait_until(
            lambda: not (s := http.get("/rollout", timeout=10).json())["store"]["ok"] and s,
            60,
            what="the hang shown in GET /rollout",
        )
        assert "has not answered" in hung["store"]["error"]
        assert any(g["gate"] == "store" and g["verdict"] == "ERROR" for g in hung["gates"])
        refused = http.post(
            "/rollout/promote", json={"reason": "ship", "actor": "bob"}, headers=ADMIN, timeout=10
        )
        assert refused.status_code == 409 and "store" in refused.json()["detail"]
        acted = http.post(
            "/rollout/rollback",
            json={"reason": "the store hangs: play safe", "actor": "sre"},
            headers=ADMIN,
            timeout=10,
        )
        assert acted.status_code == 200, acted.text
        during = http.get("/rollout", timeout=10).json()
        assert during["stage"] == "rolled_back" and during["candidate_weight"] == 0
        assert during["events"][-1]["kind"] == "rolled_back" and "seq" not in during["events"][-1]

        following = with_postgres_app(canary_app.config, url)
        rollout = next(d for d in following["applications"][1]["deployments"] if d["name"] == "Ingress")
        rollout["user_config"]["rollout"]["rollout_id"] = "pg-after-the-hang"
        deploy(following)
        wait_until(lambda: serve.status().applications[APP].status == "RUNNING", 120, what="redeployed")
        arms = {
            http.post(
                "/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"n{i}"}, timeout=10
            ).headers["x-canary-arm"]
            for i in range(20)
        }
        assert arms == {"stable"}
        pending = http.get("/rollout", timeout=10).json()
        assert pending["rollout_key"] == key  # the controller's rollout: this config is not taken yet
        assert "StoreUnavailableError: the store has not answered for" in pending["config_pending"]
        report = http.get("/admin/report", headers=ADMIN, timeout=60)  # at once: the store hangs already
        assert report.status_code == 503 and report.json()["error"] == "store_unavailable", report.text
        assert "has not answered for" in report.json()["detail"]
    finally:
        locker.rollback()
        locker.close()
    after = wait_until(
        lambda: (
            (s := http.get("/rollout").json())["store"]["ok"]
            and s["store"]["unstored"] == 0
            and s["rollout_key"] != key
            and s
        ),
        60,
        what="the config offered again taken, and everything written",
    )
    assert after["rollout_id"] == "pg-after-the-hang" and after["stage"] in ("pending", "shadow")
    assert after["config_pending"] is None
    assert http.get("/admin/report", headers=ADMIN).status_code == 200
    with psycopg.connect(url) as conn:
        kinds = [
            row[0] for row in conn.execute("SELECT kind FROM events WHERE key = %s ORDER BY seq", (key,))
        ]
        state = conn.execute("SELECT state FROM rollouts WHERE key = %s", (key,)).fetchone()
    assert kinds[-2:] == ["rolled_back", "superseded"] and kinds.count("rolled_back") == 1
    assert json.loads(state[0])["phase"] == "rolled_back"


def controller_identity_now() -> dict[str, Any]:
    """What the application's controller says it runs; raises while it is a stand-in without `describe`."""
    actor = ray.get_actor(controller_name(APP), namespace=NAMESPACE)
    return ray.get(actor.describe.remote(), timeout=30)


def test_moving_the_store_replaces_the_controller_which_resumes_from_the_new_one(
    canary_app: Canary, pg_app: tuple[httpx.Client, str], postgres: PostgresServer
) -> None:
    """The controller is detached and used to keep the store it was created with, whatever a later deploy
    said; a deploy that moves the store now replaces it, and the rollout goes on from the new store."""
    http, url = pg_app
    key = http.get("/rollout").json()["rollout_key"]
    assert controller_identity_now()["store"] == url
    moved = postgres.create_database()
    deploy(with_postgres_app(canary_app.config, moved))
    wait_until(lambda: controller_identity_now()["store"] == moved, 120, what="a controller on the new store")
    state = wait_until(
        lambda: (s := http.get("/rollout").json())["stage"] == "shadow" and s["store"]["ok"] and s,
        60,
        what="the rollout running on the new store",
    )
    assert state["rollout_key"] == key and state["config_pending"] is None
    for i in range(10):
        assert http.post(
            "/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"m{i}"}
        ).is_success
    wait_until(lambda: len(http.get("/rollout").json()["replicas"]) == 2, 60, what="both arms reporting")
    with psycopg.connect(moved) as conn:
        wait_until(
            lambda: conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] >= 10, 30, what="request log"
        )
        assert conn.execute("SELECT COUNT(*) FROM rollouts WHERE key = %s", (key,)).fetchone()[0] == 1
    with psycopg.connect(url) as conn:  # the old store keeps what it had, and gets nothing new
        assert conn.execute("SELECT COUNT(*) FROM rollouts WHERE key = %s", (key,)).fetchone()[0] == 1


@ray.remote(num_cpus=0)
class OlderController:
    """What an older canary-serve left running: the controller's name, its calls, no `describe`."""

    async def ready(self) -> int:
        return os.getpid()

    async def configure(self, section: dict[str, Any], versions: dict[str, str]) -> dict[str, Any]:
        return {"version": 0, "key": None, "candidate_weight": 0.0, "shadow_percent": 0.0}

    async def watch(self, known_version: int, timeout_s: float = 30.0) -> dict[str, Any]:
        await asyncio.sleep(timeout_s)
        return {"version": 0, "key": None, "candidate_weight": 0.0, "shadow_percent": 0.0}

    async def ingest(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def report_replica(self, *args: Any) -> None:
        return None


def test_a_controller_left_by_an_older_canary_serve_is_replaced_and_every_replica_follows(
    canary_app: Canary, pg_app: tuple[httpx.Client, str]
) -> None:
    """An upgrade redeploys the replicas, but the detached controller would have kept running the old code.
    The first Ingress replica of the new deploy replaces it; the replicas that knew the old one follow the
    name to the new one."""
    http, url = pg_app
    key = http.get("/rollout").json()["rollout_key"]
    ray.kill(ray.get_actor(controller_name(APP), namespace=NAMESPACE), no_restart=True)
    wait_until(lambda: find_controller(APP) is None, 30, what="the controller gone")
    older = OlderController.options(
        name=controller_name(APP), namespace=NAMESPACE, lifetime="detached"
    ).remote()
    ray.get(older.ready.remote(), timeout=30)
    config = with_postgres_app(canary_app.config, url)
    next(d for d in config["applications"][1]["deployments"] if d["name"] == "Ingress")["num_replicas"] = 2
    deploy(config)  # a second Ingress replica starts: its first config checks what the controller runs
    running = wait_until(controller_identity_now, 120, what="the controller replaced")
    assert running["store"] == url
    state = wait_until(
        lambda: (s := http.get("/rollout").json())["stage"] == "shadow" and s, 60, what="the rollout resumed"
    )
    assert state["rollout_key"] == key
    for i in range(40):
        assert http.post(
            "/predict", json={"features": [0.1] * 30}, headers={"X-Routing-Key": f"u{i}"}
        ).is_success
    actor = ray.get_actor(controller_name(APP), namespace=NAMESPACE)
    wait_until(
        lambda: (
            ray.get(actor.__ray_call__.remote(lambda self: len(self._core.telemetry.ingress)), timeout=30)
            == 2
        ),
        60,
        what="both Ingress replicas flushing to the new controller",
    )
