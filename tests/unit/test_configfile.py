"""Which applications of a Serve config are canary-serve's (every spelling Ray accepts), and where `canary up`
finds the one it waits on."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.configfile import check_config, is_canary_app, serve_url
from serving.errors import InvalidConfigError

DEMO: dict[str, Any] = yaml.safe_load((Path(__file__).resolve().parents[2] / "configs/demo.yaml").read_text())


def demo(import_path: str = "serving.app:build") -> dict[str, Any]:
    config = copy.deepcopy(DEMO)
    config["applications"][0]["import_path"] = import_path
    return config


def _ingress_rollout(config: dict[str, Any]) -> dict[str, Any]:
    ingress = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Ingress")
    return ingress["user_config"]["rollout"]


@pytest.mark.parametrize("path", ["serving.app:build", "serving.app.build", " serving.app:build\t"])
def test_both_of_ray_s_spellings_are_the_canary_app(path):
    assert is_canary_app({"import_path": path})


@pytest.mark.parametrize("path", ["serving.app:builder", "other.app:build", "serving.apps.build", None])
def test_other_import_paths_are_not(path):
    assert not is_canary_app({"import_path": path})


def test_a_dotted_import_path_gets_every_canary_check():
    config = demo("serving.app.build")
    _ingress_rollout(config).update(candidate_weight=120, candidat_weight=5)
    config["applications"][0]["args"]["stable"]["artifact"] = "models/artifacts/missing"
    with pytest.raises(InvalidConfigError) as refused:
        check_config(config)
    keys = {e.key for e in refused.value.errors}
    assert "applications[0].args.stable.artifact" in keys
    assert "applications[0].deployments[Ingress].user_config.rollout.candidate_weight" in keys
    assert "applications[0].deployments[Ingress].user_config.rollout.candidat_weight" in keys


def test_whitespace_around_the_import_path_is_checked_and_named_since_ray_would_not_strip_it():
    config = demo("serving.app:build ")
    _ingress_rollout(config)["candidate_weight"] = 120
    with pytest.raises(InvalidConfigError) as refused:
        check_config(config)
    keys = [e.key for e in refused.value.errors]
    assert keys == [
        "applications[0].import_path",
        "applications[0].deployments[Ingress].user_config.rollout.candidate_weight",
    ]


def test_the_dotted_spelling_passes_when_the_config_is_good():
    check_config(demo("serving.app.build"))


@pytest.mark.parametrize(
    ("http_options", "route_prefix", "url"),
    [
        (None, "/", "http://127.0.0.1:8000"),
        ({"host": "127.0.0.2", "port": 8100}, "/fraud/", "http://127.0.0.2:8100/fraud"),
        ({"host": "0.0.0.0"}, "/", "http://127.0.0.1:8000"),
        ({"host": "::", "port": 9000}, "/x", "http://[::1]:9000/x"),
    ],
)
def test_the_serve_url_comes_from_http_options_and_the_route_prefix(http_options, route_prefix, url):
    config = demo()
    config.pop("http_options")
    if http_options is not None:
        config["http_options"] = http_options
    config["applications"][0]["route_prefix"] = route_prefix
    assert serve_url(config) == url


def test_a_canary_app_without_an_http_route_has_no_serve_url():
    config = demo()
    config["applications"][0]["route_prefix"] = None
    with pytest.raises(InvalidConfigError, match=r"applications\[0\].route_prefix"):
        serve_url(config)


def test_artifacts_that_live_only_on_a_remote_cluster_can_skip_the_local_check():
    config = demo()
    config["applications"][0]["args"]["candidate"]["artifact"] = "/models-on-the-cluster/fraud-v3"
    with pytest.raises(InvalidConfigError) as refused:
        check_config(config)
    assert [e.key for e in refused.value.errors] == ["applications[0].args.candidate.artifact"]
    check_config(config, artifacts=False)  # the shape of the args is still checked:
    config["applications"][0]["args"]["candidate"]["devise"] = "cuda"
    with pytest.raises(InvalidConfigError) as refused:
        check_config(config, artifacts=False)
    assert [e.key for e in refused.value.errors] == ["applications[0].args.candidate.devise"]


def _arm(config: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def test_a_batch_larger_than_the_requests_a_replica_holds_is_refused_naming_both_keys():
    config = demo()
    stable = _arm(config, "stable")
    stable["max_ongoing_requests"] = 64
    stable["user_config"]["batching"]["max_batch_size"] = 128
    with pytest.raises(InvalidConfigError) as refused:
        check_config(config)
    (error,) = refused.value.errors
    assert error.key == "applications[0].deployments[stable].user_config.batching.max_batch_size"
    assert error.got == 128 and "max_ongoing_requests (64)" in error.problem
    assert "max_ongoing_requests raised to at least 128" in error.expected
    stable["max_ongoing_requests"] = 128  # exactly one batch's worth is enough
    check_config(config)


def test_without_max_ongoing_requests_the_model_servers_default_bounds_the_batch():
    config = demo()
    candidate = _arm(config, "candidate")
    candidate.pop("max_ongoing_requests", None)
    candidate["user_config"]["batching"]["max_batch_size"] = 64  # ModelServer's default: fits
    check_config(config)
    candidate["user_config"]["batching"]["max_batch_size"] = 65
    with pytest.raises(InvalidConfigError) as refused:
        check_config(config)
    assert [e.key for e in refused.value.errors] == [
        "applications[0].deployments[candidate].user_config.batching.max_batch_size"
    ]
