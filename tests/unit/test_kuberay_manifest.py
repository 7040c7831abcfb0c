"""configs/kuberay/rayservice.yaml: a RayService valid against the CRD's schema (kept in the repo), whose
serveConfigV2 is a canary-serve config that passes the same checks as `canary validate`."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from rollout.configfile import check_config

ROOT = Path(__file__).resolve().parents[2]
MANIFEST = ROOT / "configs" / "kuberay" / "rayservice.yaml"
SCHEMA = json.loads((ROOT / "configs" / "kuberay" / "rayservice-schema.json").read_text())


@pytest.fixture(scope="module")
def documents():
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


def rayservice(documents):
    """A fresh copy: tests break it on purpose."""
    return copy.deepcopy(next(d for d in documents if d["kind"] == "RayService"))


def test_the_rayservice_matches_the_crd_schema(documents):
    jsonschema.validate(rayservice(documents), SCHEMA)


def test_the_schema_catches_what_kuberay_refuses(documents):
    broken = rayservice(documents)
    broken["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    with pytest.raises(jsonschema.ValidationError, match="is not of type 'string'"):
        jsonschema.validate(broken, SCHEMA)


def test_serve_config_v2_is_a_valid_canary_config_with_gpus_autoscaling_and_postgres(documents):
    spec = rayservice(documents)["spec"]
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    check_config(serve_config, "serveConfigV2")  # raises InvalidConfigError naming the key
    deployments = {d["name"]: d for d in serve_config["applications"][0]["deployments"]}
    assert deployments["stable"]["ray_actor_options"]["num_gpus"] == 1
    assert deployments["stable"]["autoscaling_config"]["min_replicas"] >= 2  # stable stays warm for rollback
    assert deployments["candidate"]["autoscaling_config"]["min_replicas"] >= 1
    assert deployments["Ingress"]["user_config"]["rollout"]["store"]["url"].startswith("postgresql://")
    groups = spec["rayClusterConfig"]["workerGroupSpecs"]
    assert any(
        c["resources"]["limits"].get("nvidia.com/gpu")
        for g in groups
        for c in g["template"]["spec"]["containers"]
    )


def test_prometheus_scrapes_metrics_through_a_podmonitor(documents):
    monitor = next(d for d in documents if d["kind"] == "PodMonitor")
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == "serve"
    head = rayservice(documents)["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"
    ][0]
    assert "serve" in {p["name"] for p in head["ports"]}


def test_the_schema_catches_a_misspelt_worker_group_field(documents):
    broken = rayservice(documents)
    group = broken["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["maxReplica"] = group.pop("maxReplicas")
    with pytest.raises(jsonschema.ValidationError, match="'maxReplica' was unexpected"):
        jsonschema.validate(broken, SCHEMA)


def test_the_gpu_workers_hold_both_arms_at_their_minimum_and_maximum(documents):
    # stable's warm minimum is what a rollback relies on: it must fit the GPU pods the cluster always keeps
    spec = rayservice(documents)["spec"]
    serve_config = yaml.safe_load(spec["serveConfigV2"])
    arms = [d for d in serve_config["applications"][0]["deployments"] if d["name"] in ("stable", "candidate")]
    group = next(g for g in spec["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu")
    per_pod = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
    for bound, pods in (("min_replicas", group["minReplicas"]), ("max_replicas", group["maxReplicas"])):
        gpus = sum(a["autoscaling_config"][bound] * a["ray_actor_options"]["num_gpus"] for a in arms)
        assert gpus <= pods * per_pod, f"{bound}: the arms need {gpus} GPUs, the {pods} pods have fewer"
