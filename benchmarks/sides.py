"""The serving sides of the throughput suite, seen from the driver: their Serve applications (sized like the
canary config's), deploying them next to whatever else runs and removing them again, and reading what they
counted (batch sizes from every model replica; requests per arm and mirrors from canary-serve).

The deployments themselves are in `benchmarks.peers`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

import httpx

CANDIDATE_WEIGHT, SHADOW_PERCENT = 5.0, 10.0
DEPLOY_TIMEOUT_S = 600.0


class BenchError(RuntimeError):
    """The suite could not run (a deployment failed or never became ready); the message says which."""


@dataclass(frozen=True)
class Side:
    """One serving side: a Serve application and the path its predictions are posted to."""

    key: str
    label: str
    app: str
    import_path: str
    route_prefix: str
    path: str
    model_deployments: tuple[str, ...]


DIRECT = Side(
    "direct",
    "Ray Serve, proxy → model",
    "bench-direct",
    "benchmarks.peers:direct",
    "/bench-direct",
    "/bench-direct",
    ("Model",),
)
TWO_HOP = Side(
    "two-hop",
    "Ray Serve, ingress → handle → model",
    "bench-twohop",
    "benchmarks.peers:two_hop",
    "/bench-twohop",
    "/bench-twohop",
    ("Model",),
)


def canary_label(candidate_weight: float = CANDIDATE_WEIGHT, shadow_percent: float = SHADOW_PERCENT) -> str:
    """canary-serve's side at a stage, e.g. "canary-serve, stable 95 / candidate 5, shadow 10 %"."""
    weight, shadow = f"{candidate_weight:g}", f"{shadow_percent:g}"
    return f"canary-serve, stable {100 - candidate_weight:g} / candidate {weight}, shadow {shadow} %"


CANARY = Side(
    "canary",
    canary_label(),
    "bench-canary",
    "benchmarks.peers:canary",
    "/bench-canary",
    "/bench-canary/predict",
    ("stable", "candidate"),
)
SIDES = (DIRECT, TWO_HOP, CANARY)


def _deployment(app: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in app["deployments"] if d["name"] == name)


def _shared(options: dict[str, Any], replicas: int, gpus: float) -> dict[str, Any]:
    """A model replica's actor options when ``replicas`` model replicas share this machine's GPUs."""
    out = dict(options)
    if out.get("num_gpus"):
        out["num_gpus"] = min(float(out["num_gpus"]), gpus / replicas) if gpus else 0
    return out


def applications(
    base: dict[str, Any],
    artifact: str,
    store: str,
    gpus: float,
    candidate_weight: float = CANDIDATE_WEIGHT,
    shadow_percent: float = SHADOW_PERCENT,
) -> list[dict[str, Any]]:
    """The three serving sides as Serve applications, sized like ``base``'s canary application, canary-serve
    at ``candidate_weight`` and ``shadow_percent`` (manual mode).

    The peers' model deployment takes the stable arm's batching, ``max_ongoing_requests`` and actor options;
    the two-hop peer's forwarder takes the Ingress's. The direct peer's model is its front deployment, the
    one the proxy queues for, so it accepts as many requests at once as the Ingress: at the stable arm's 64,
    128 clients made Serve's proxy queue and its throughput collapse (82 req/s against 343 at 200, fraud-v2
    on 2 cores; 4 req/s in the full bench). With a GPU, the four model replicas (two peers, two canary arms)
    share it with equal fractions.
    """
    canary = base["applications"][0]
    ingress, stable = _deployment(canary, "Ingress"), _deployment(canary, "stable")
    model_replicas = 4
    args = canary.get("args") or {}
    peer_args = {
        "artifact": artifact,
        "batching": (stable.get("user_config") or {}).get("batching", {}),
        "device": (args.get("stable") or {}).get("device", "auto"),
    }
    model = {
        "name": "Model",
        "num_replicas": stable.get("num_replicas", 1),
        "max_ongoing_requests": stable.get("max_ongoing_requests", 64),
        "ray_actor_options": _shared(stable.get("ray_actor_options") or {}, model_replicas, gpus),
    }
    forwarder = {
        "name": "Forwarder",
        "num_replicas": ingress.get("num_replicas", 1),
        "max_ongoing_requests": ingress.get("max_ongoing_requests", 200),
        "ray_actor_options": ingress.get("ray_actor_options") or {"num_cpus": 0},
    }
    deployments = []
    for dep in canary["deployments"]:
        dep = dict(dep)
        if dep["name"] == "Ingress":
            user_config = dict(dep.get("user_config") or {})
            user_config["rollout"] = {
                **(user_config.get("rollout") or {}),
                "mode": "manual",
                "candidate_weight": candidate_weight,
                "shadow_percent": shadow_percent,
                "store": {"path": store},
            }
            dep["user_config"] = user_config
        else:
            dep["ray_actor_options"] = _shared(dep.get("ray_actor_options") or {}, model_replicas, gpus)
        deployments.append(dep)
    ours = {
        "name": CANARY.app,
        "route_prefix": CANARY.route_prefix,
        "import_path": CANARY.import_path,
        "args": {arm: {**(args.get(arm) or {}), "artifact": artifact} for arm in ("stable", "candidate")},
        "deployments": deployments,
    }
    front = {
        **model,
        "max_ongoing_requests": max(model["max_ongoing_requests"], forwarder["max_ongoing_requests"]),
    }
    return [
        {**_app(DIRECT), "args": peer_args, "deployments": [front]},
        {**_app(TWO_HOP), "args": peer_args, "deployments": [model, forwarder]},
        ours,
    ]


def _app(side: Side) -> dict[str, Any]:
    return {"name": side.app, "route_prefix": side.route_prefix, "import_path": side.import_path}


def deploy_sides(apps: list[dict[str, Any]], timeout_s: float = DEPLOY_TIMEOUT_S) -> None:
    """Deploys the sides' applications next to whatever else runs in this Serve (a declarative deploy
    replaces the whole set, so the others' configs are deployed again, unchanged), then waits until each
    is RUNNING."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    client = serve.context._get_global_client()
    ours = {a["name"] for a in apps}
    details = client.get_serve_details()
    others = [
        app["deployed_app_config"]
        for name, app in (details.get("applications") or {}).items()
        if name not in ours and app.get("deployed_app_config")
    ]
    config: dict[str, Any] = {"applications": [*others, *apps]}
    if details.get("proxy_location"):
        config["proxy_location"] = details["proxy_location"]
    if details.get("http_options"):
        config["http_options"] = {
            k: details["http_options"][k] for k in ("host", "port") if k in details["http_options"]
        }
    client.deploy_apps(ServeDeploySchema.model_validate(config))
    deadline = time.monotonic() + timeout_s
    pending = set(ours)
    while pending:
        statuses = serve.status().applications
        for name in list(pending):
            status = statuses.get(name)
            if status is not None and status.status == "RUNNING":
                pending.discard(name)
            elif status is not None and status.status == "DEPLOY_FAILED":
                raise BenchError(f"application {name!r} failed to deploy: {status.message}")
        if pending and time.monotonic() > deadline:
            raise BenchError(f"applications {sorted(pending)} not RUNNING after {timeout_s:.0f}s")
        time.sleep(0.5)


def remove_sides() -> None:
    """Deletes the sides' applications and the canary side's rollout controller (a detached actor)."""
    import ray
    from ray import serve

    from rollout.controller import NAMESPACE, controller_name

    serve.context._get_global_client().delete_apps([side.app for side in SIDES])
    with contextlib.suppress(ValueError):  # ValueError: it was never created
        ray.kill(ray.get_actor(controller_name(CANARY.app), namespace=NAMESPACE))


def take_batch_sizes(side: Side) -> dict[str, dict[int, int]]:
    """Each model deployment's batch sizes since the last call, summed over its replicas."""
    from ray import serve

    out: dict[str, dict[int, int]] = {}
    for name in side.model_deployments:
        handle = serve.get_deployment_handle(name, side.app)
        total: dict[int, int] = {}
        for sizes in handle.broadcast("batch_sizes", reset=True).results(timeout_s=30):
            for size, count in sizes.items():
                total[int(size)] = total.get(int(size), 0) + count
        out[name] = dict(sorted(total.items()))
    return out


def canary_counts(url: str) -> dict[str, Any]:
    """What canary-serve itself counted: requests per arm and the shadow's mirrors (since it started)."""
    state = httpx.get(f"{url}{CANARY.route_prefix}/rollout", timeout=30).json()
    arms = {arm: state["arms"][arm]["stats"]["requests"] for arm in ("stable", "candidate")}
    shadow = {k: state["shadow"][k] for k in ("mirrored", "completed", "dropped", "timed_out", "failed")}
    return {
        "candidate_weight": state["candidate_weight"],
        "shadow_percent": state["shadow_percent"],
        "requests": arms,
        "shadow": shadow,
    }
