"""The multi-node scenario of `test_multinode.py`, run as its own driver process.

A Ray driver belongs to one cluster for its lifetime, and the integration session's pytest process already
belongs to the shared local cluster; so the multi-node cluster gets a process of its own. It prints each step
and exits non-zero with the failed check's message.

    python tests/integration/multinode_driver.py      # needs CANARY_MULTINODE_STORE_URL (postgresql://...)

Topology (``ray.cluster_utils.Cluster``, every raylet on this machine, one CPU each):

    head            Serve's controller and its HTTP proxy (HeadOnly)
    node-a          Ingress replica 1, stable         (custom resources worker, ingress, stable_arm)
    node-b          Ingress replica 2, candidate      (custom resources worker, ingress, candidate_arm)
    node-c          a spare, added before a node is removed (all of them)

The store is PostgreSQL, as on a real cluster, where a SQLite file on the lost node's disk would be lost with
it. The controller needs no resources, so Ray may place it on any node, the head included, which this test
cannot remove; so the test creates it first, as `get_or_create_controller` would, asking for a sliver of a
custom resource only the worker nodes have (``worker``), and the Ingress replicas find it by name as always.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import ray
import yaml
from conftest import wait_until
from ray import serve
from ray.cluster_utils import Cluster
from ray.serve.schema import ServeDeploySchema

from rollout.controller import NAMESPACE, RolloutController, controller_name
from serving.config import IngressConfig, validate_section

ROOT = Path(__file__).resolve().parents[2]
APP = "canary"
ADMIN_TOKEN = "multinode-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# A routing-table push takes milliseconds (benchmarks: p99 13 ms on one node); a replica that missed it
# would see the table only at its next long poll, 30 s later. One second tells the two apart with room for
# a loaded 2-core machine running four raylets.
PROPAGATION_BOUND_S = 1.0
REQUESTS = 240


def step(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def check(condition: Any, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multinode_config(port: int, store_url: str) -> dict[str, Any]:
    """configs/demo.yaml with two Ingress replicas, each deployment pinned by a custom resource."""
    config = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    placement = {"Ingress": "ingress", "stable": "stable_arm", "candidate": "candidate_arm"}
    for dep in config["applications"][0]["deployments"]:
        dep["ray_actor_options"] = {"num_cpus": 0, "resources": {placement[dep["name"]]: 1}}
        if dep["name"] == "Ingress":
            dep["num_replicas"] = 2
            dep["user_config"]["rollout"]["store"] = {"url": store_url}
    return config


def alive_actors(class_name: str) -> list[str]:
    """The node ids of the ALIVE actors of a class, from the GCS's actor table (`ray.util.state` would need
    the dashboard, which this cluster does without)."""
    table = ray._private.state.actors(actor_state_name="ALIVE")
    return [a["Address"]["NodeID"] for a in table.values() if a["ActorClassName"] == class_name]


def replica_nodes(deployment: str) -> list[str]:
    return alive_actors(f"ServeReplica:{APP}:{deployment}")


def controller_node() -> str | None:
    found = alive_actors("RolloutController")
    return found[0] if found else None


def replica_tables() -> list[tuple[Any, ...]]:
    """What every Ingress replica routes by now, asked of each replica (not of one behind the proxy)."""
    handle = serve.get_deployment_handle("Ingress", APP)
    answers = handle.broadcast("rollout").results(timeout_s=30)
    return [(a["mode"], a["stage"], a["candidate_weight"], a["shadow_percent"]) for a in answers]


def access_counts(logs: Path) -> Counter[str]:
    """POST /predict answers per Ingress replica, from each replica's own access log."""
    counts: Counter[str] = Counter()
    for path in (logs / "serve").glob(f"replica_{APP}_Ingress_*.log"):
        replica = path.stem.removeprefix(f"replica_{APP}_Ingress_")
        lines = path.read_text(errors="replace").splitlines()
        counts[replica] = sum(1 for line in lines if re.search(r"POST /predict 200", line))
    return counts


def merged_requests(http: httpx.Client) -> int:
    arms = http.get("/rollout").json()["arms"]
    return int(arms["stable"]["stats"]["requests"] + arms["candidate"]["stats"]["requests"])


def set_weight(http: httpx.Client, weight: float) -> dict[str, Any]:
    body = {"weight": weight, "reason": f"multinode {weight:g}"}
    answer = http.put("/rollout/weight", json=body, headers=ADMIN)
    check(answer.status_code == 200, f"set-weight {weight}: {answer.status_code} {answer.text}")
    return answer.json()


def run(store_url: str) -> None:
    step("starting a head and two worker nodes")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            # not the default 52365: the integration session's own cluster may be running beside this one
            "dashboard_agent_listen_port": free_port(),
            # notice a removed node in seconds, not the default ~30 s
            "_system_config": {"health_check_period_ms": 1000, "health_check_failure_threshold": 3},
        },
    )
    try:
        nodes = {
            "node-a": cluster.add_node(num_cpus=1, resources={"worker": 1, "ingress": 1, "stable_arm": 1}),
            "node-b": cluster.add_node(num_cpus=1, resources={"worker": 1, "ingress": 1, "candidate_arm": 1}),
        }
        ray.init(
            address=cluster.address,
            logging_level="ERROR",
            log_to_driver=False,  # the replicas' own log files are read below; the console stays readable
            runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "CANARY_ADMIN_TOKEN": ADMIN_TOKEN}},
        )
        scenario(cluster, nodes, store_url)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()


def scenario(cluster: Cluster, nodes: dict[str, Any], store_url: str) -> None:
    names = {n.node_id: name for name, n in nodes.items()} | {cluster.head_node.node_id: "head"}
    port = free_port()
    config = multinode_config(port, store_url)
    deployment = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    store = validate_section(IngressConfig, deployment["user_config"], source="Ingress").rollout.store
    retention = {
        "windows_s": store.windows_retention_s,
        "request_log_s": store.request_log_retention_s,
        "max_requests": store.max_logged_requests,
    }
    controller = RolloutController.options(
        name=controller_name(APP),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        resources={"worker": 0.01},  # any worker node, never the head (see the module docstring)
    ).remote(APP, store.location, retention)
    ray.get(controller.ready.remote(), timeout=120)
    step(f"the rollout controller starts on {names.get(controller_node() or '', '?')}")
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    serve.context._get_global_client().deploy_apps(ServeDeploySchema.model_validate(copy.deepcopy(config)))
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    wait_until(lambda: serve.status().applications[APP].status == "RUNNING", 300, what="app RUNNING")
    wait_until(lambda: http.get("/healthz").status_code == 200, 60, what="/healthz 200")
    step("deployed on 3 nodes")

    # 1. placement: Ingress replicas on two nodes, the arms on different nodes
    ingress = {names[n] for n in replica_nodes("Ingress")}
    stable = {names[n] for n in replica_nodes("stable")}
    candidate = {names[n] for n in replica_nodes("candidate")}
    check(ingress == {"node-a", "node-b"}, f"Ingress replicas on {ingress}, expected node-a and node-b")
    check(stable == {"node-a"} and candidate == {"node-b"}, f"stable on {stable}, candidate on {candidate}")
    step(f"placement: Ingress on {sorted(ingress)}, stable on {stable}, candidate on {candidate}")

    # 2. every Ingress replica routes by the same table, pushed within the bound
    wait_until(lambda: len(set(replica_tables())) == 1 and len(replica_tables()) == 2, 60, what="one table")
    for weight in (40.0, 0.0, 60.0):
        pushed = http.get("/rollout").json()["propagation_ms"]["count"]
        set_weight(http, weight)
        tables = wait_until(
            lambda w=weight: (t := replica_tables()) and all(row[2] == w for row in t) and t,
            30,
            every=0.1,
            what=f"weight {weight} on every Ingress replica",
        )
        check(len(tables) == 2 and len(set(tables)) == 1, f"replicas disagree: {tables}")
        # each replica measured its own push (controller publish -> applied) and reported it
        propagation = wait_until(
            lambda p=pushed: (m := http.get("/rollout").json()["propagation_ms"])["count"] >= p + 2 and m,
            30,
            what="both replicas' propagation reports",
        )
        check(
            propagation["p99"] is not None and propagation["p99"] <= PROPAGATION_BOUND_S * 1000,
            f"routing-table propagation p99 {propagation['p99']} ms exceeds {PROPAGATION_BOUND_S * 1000} ms",
        )
        step(f"weight {weight:g}: every replica routes by {tables[0]}; propagation {propagation}")

    # 3. merged telemetry is the sum of what each replica served
    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    before_merged, before_replicas = merged_requests(http), access_counts(logs)
    body = {"features": [0.1] * 30}
    with ThreadPoolExecutor(8) as pool:
        statuses = list(
            pool.map(
                lambda i: http.post("/predict", json=body, headers={"X-Routing-Key": f"m{i}"}).status_code,
                range(REQUESTS),
            )
        )
    check(statuses.count(200) == REQUESTS, f"not every request answered 200: {Counter(statuses)}")
    merged = wait_until(
        lambda: (n := merged_requests(http) - before_merged) >= REQUESTS and n, 30, what="merged telemetry"
    )
    served = wait_until(
        lambda: (c := access_counts(logs) - before_replicas) and sum(c.values()) >= REQUESTS and c,
        30,
        what="replica access logs",
    )
    check(len(served) == 2 and all(served.values()), f"both Ingress replicas must serve: {dict(served)}")
    check(
        merged == sum(served.values()) == REQUESTS,
        f"merged {merged} != sum of replicas {dict(served)} (sent {REQUESTS})",
    )
    step(f"telemetry: merged {merged} = {' + '.join(map(str, served.values()))} from the two replicas")

    # 4. the controller's node goes away: it comes back on another node and resumes from the store
    before = http.get("/rollout").json()
    home = controller_node()
    where = names.get(home or "", home)
    check(where in ("node-a", "node-b"), f"the controller runs on {where}")
    nodes["node-c"] = cluster.add_node(
        num_cpus=1, resources={"worker": 1, "ingress": 1, "stable_arm": 1, "candidate_arm": 1}
    )
    names[nodes["node-c"].node_id] = "node-c"
    step(f"removing {names[home]}, where the controller runs (stage {before['stage']}, weight 60)")
    cluster.remove_node(nodes[names[home]], allow_graceful=False)

    def back() -> Any:
        now = controller_node()
        if now is None or now == home:
            return None
        state = http.get("/rollout").json()
        return (names.get(now, now), state) if state.get("rollout_key") else None

    moved_to, after = wait_until(back, 180, every=1, what="controller restarted on another node")
    check(after["rollout_key"] == before["rollout_key"], f"a new rollout: {after['rollout_key']}")
    check(after["events_total"] >= before["events_total"], "events lost")
    seqs = [e["seq"] for e in before["events"]]
    check([e["seq"] for e in after["events"]][: len(seqs)] == seqs, "events differ after the restart")
    weights = [e.get("weight") for e in after["events"] if e["kind"] == "weight_set"]
    check(weights[-3:] == [40.0, 0.0, 60.0], f"operator weights lost: {weights}")
    wait_until(lambda: serve.status().applications[APP].status == "RUNNING", 300, what="app RUNNING again")
    tables = wait_until(
        lambda: (t := replica_tables()) and len(t) == 2 and all(row[2] == 60.0 for row in t) and t,
        60,
        what="weight 60 on both Ingress replicas, one of them new",
    )
    ok = http.post("/predict", json=body, headers={"X-Routing-Key": "after"})
    check(ok.status_code == 200, f"predict after the node loss: {ok.status_code} {ok.text}")
    step(f"controller back on {moved_to}: {after['stage']}, {after['events_total']} events; {tables}")


if __name__ == "__main__":
    url = os.environ.get("CANARY_MULTINODE_STORE_URL")
    if not url:
        sys.exit("set CANARY_MULTINODE_STORE_URL to a postgresql:// URL")
    run(url)
    step("PASS")
