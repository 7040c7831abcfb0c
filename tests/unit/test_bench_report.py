"""The throughput suite's ratios, goals and files from a made-up payload, its command line, and the older
benchmarks' `closed_loop` on the new load generator. No Ray, no network."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from benchmarks import bench, bench_report, harness, loadgen, sides
from rollout import cli


def run(concurrency, throughput, p50, sizes=None):
    return {
        "mode": "closed",
        "concurrency": concurrency,
        "requests": 100,
        "ok": 100,
        "non_2xx": 0,
        "errors": 0,
        "incomplete": 0,
        "sent": 110,
        "throughput": throughput,
        "p50_ms": p50,
        "p95_ms": 2 * p50,
        "p99_ms": 3 * p50,
        "batch_sizes": sizes or {"Model": {1: 10, 4: 25}},
        "gpu": {"available": False, "reason": "no GPU here"},
        "cpu_ms_per_request": {"proxy": 5.0, "bench-direct/Model": 3.0},
    }


def model(architecture, canary_throughput, canary_p50=10.0):
    closed = {
        "direct": [run(1, 100.0, 8.0), run(8, 400.0, 20.0)],
        "two-hop": [run(1, 80.0, 10.0), run(8, 300.0, 25.0)],
        "canary": [
            run(1, canary_throughput[0], canary_p50, {"stable": {2: 5}, "candidate": {1: 3}}),
            run(8, canary_throughput[1], canary_p50 * 2.5, {"stable": {8: 5}, "candidate": {1: 3}}),
        ],
    }
    sides = {
        key: {
            "label": key,
            "app": f"bench-{key}",
            "closed": runs,
            "open": {**runs[0], "mode": "open", "send_lag_p99_ms": 1.0},
        }
        for key, runs in closed.items()
    }
    return {
        "artifact": "models/artifacts/x",
        "model_version": f"{architecture}-v1",
        "architecture": architecture,
        "input_kind": "features",
        "raw": {
            "device_name": "cpu",
            "torch_threads": 2,
            "best": {"batch_size": 32, "items_per_s": 1000.0},
            "forward_best": {"batch_size": 512, "items_per_s": 9000.0},
            "points": [],
        },
        "sides": sides,
        "open_rate": 56.0,
        "canary_counts": {
            "candidate_weight": 5.0,
            "shadow_percent": 10.0,
            "requests": {"stable": 950, "candidate": 50},
            "shadow": {"mirrored": 95, "dropped": 0},
        },
    }


def payload(gpu, canary_throughput=(78.0, 290.0), architecture="fraud_logistic", settings=bench.QUICK):
    data = {
        "sides": bench.labels(settings),
        "settings": {**bench.asdict(settings), "config": "configs/demo.yaml"},
        "gpu_run": None if gpu else "none on this machine: these are CPU numbers",
        "models": {"m": model(architecture, canary_throughput)},
    }
    return bench_report.analyse(data, gpu)


def test_ratios_are_canary_over_each_peer_and_over_raw_per_concurrency():
    (one, eight) = payload(gpu=False)["models"]["m"]["ratios"]
    assert one["concurrency"] == 1 and eight["concurrency"] == 8
    assert one["throughput_vs_two_hop"] == pytest.approx(78 / 80)
    assert one["throughput_vs_direct"] == pytest.approx(78 / 100)
    assert eight["p50_vs_two_hop"] == pytest.approx(25 / 25)
    assert eight["vs_raw"] == pytest.approx(290 / 1000)


def test_the_throughput_goal_is_judged_by_the_worst_concurrency():
    met = payload(gpu=False, canary_throughput=(78.0, 290.0))["models"]["m"]["goals"]
    assert met["throughput_vs_two_hop_every_concurrency"] == {
        "goal": 0.95,
        "value": 0.9666666666666667,
        "met": True,
    }
    missed = payload(gpu=False, canary_throughput=(78.0, 200.0))["models"]["m"]["goals"]
    assert missed["throughput_vs_two_hop_every_concurrency"]["met"] is False
    assert missed["p50_vs_two_hop_every_concurrency"]["met"] is True  # 10/10 and 25/25


def test_the_raw_goal_is_judged_only_for_the_compute_bound_model_on_a_gpu():
    cpu = payload(gpu=False, architecture="text_transformer")["models"]["m"]["goals"]["best_vs_raw_on_gpu"]
    assert cpu["met"] is None and cpu["note"] == "set for a GPU; this run had none"
    gpu = payload(gpu=True, architecture="text_transformer")["models"]["m"]["goals"]["best_vs_raw_on_gpu"]
    assert gpu["met"] is False and gpu["value"] == pytest.approx(0.29)
    fraud = payload(gpu=True)["models"]["m"]["goals"]["best_vs_raw_on_gpu"]
    assert fraud["met"] is None and "compute-bound" in fraud["note"]


def test_a_missing_value_is_not_judged_as_met():
    data = payload(gpu=False, canary_throughput=(0.0, 0.0))
    data["models"]["m"]["sides"]["two-hop"]["closed"][0]["throughput"] = 0.0
    bench_report.analyse(data, gpu=False)
    assert data["models"]["m"]["goals"]["throughput_vs_two_hop_every_concurrency"]["met"] is None


def test_markdown_states_ratios_goals_and_that_gpu_numbers_are_absent():
    text = bench_report.markdown(payload(gpu=False))
    assert "| 1 | 0.78× | 0.97× | 1.00× |" in text
    assert "GPU: none on this machine" in text and "raw goal is not judged" in text
    assert "not judged" in text and "quick run" in text
    assert "Where the CPU goes" in text and "| proxy | 5.0 | 5.0 | 5.0 |" in text
    assert "| Model | 3.0 | – | – |" in text  # each side's own deployments, by name
    assert "| the other sides (idle) | 0.0 | 3.0 | 3.0 |" in text
    assert "950 stable and 50 candidate" in text


def test_write_puts_json_markdown_and_plot_side_by_side(tmp_path):
    json_path, md_path, png = bench.write(payload(gpu=False), tmp_path)
    assert json_path.parent == md_path.parent == png.parent == tmp_path
    assert json_path.stem == md_path.stem == png.stem and json_path.stem.startswith("bench-quick-")
    saved = json.loads(json_path.read_text())
    assert saved["benchmark"] == "bench-quick" and "machine" in saved and "m" in saved["models"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.name in md_path.read_text()


def test_sides_share_the_gpu_and_take_the_canary_configs_sizes():
    _, base = bench.base_config(bench.FULL, gpu=True)  # configs/gpu.yaml: 0.5 GPU per arm
    apps = sides.applications(base, "models/artifacts/text-v1", "/tmp/x.db", gpus=1.0)
    assert [a["name"] for a in apps] == ["bench-direct", "bench-twohop", "bench-canary"]
    models = [d for a in apps for d in a["deployments"] if d["name"] in ("Model", "stable", "candidate")]
    assert len(models) == 4 and sum(d["ray_actor_options"]["num_gpus"] for d in models) <= 1.0
    direct, two_hop, canary = apps
    assert direct["args"]["batching"] == {"max_batch_size": 128, "batch_wait_timeout_s": 0.002}
    assert {a["artifact"] for a in canary["args"].values()} == {"models/artifacts/text-v1"}
    rollout = next(d for d in canary["deployments"] if d["name"] == "Ingress")["user_config"]["rollout"]
    assert (rollout["candidate_weight"], rollout["shadow_percent"], rollout["store"]) == (
        5,
        10,
        {"path": "/tmp/x.db"},
    )
    forwarder = next(d for d in two_hop["deployments"] if d["name"] == "Forwarder")
    assert forwarder["max_ongoing_requests"] == 200
    # the model behind a hop takes the stable arm's limit; the direct peer's, facing the proxy, at least the
    # Ingress's
    assert [d["max_ongoing_requests"] for d in two_hop["deployments"] if d["name"] == "Model"] == [256]
    assert [d["max_ongoing_requests"] for d in direct["deployments"]] == [256]
    _, cpu_base = bench.base_config(bench.FULL, gpu=False)  # configs/demo.yaml: 64 per arm
    cpu_direct = sides.applications(cpu_base, "models/artifacts/fraud-v2", "/tmp/x.db", gpus=0.0)[0]
    assert [d["max_ongoing_requests"] for d in cpu_direct["deployments"]] == [200]


def test_canary_runs_at_the_stage_asked_for_and_its_results_never_replace_the_default_stages(tmp_path):
    args = bench.parser().parse_args(["--quick", "--canary-weight", "0", "--canary-shadow", "0"])
    settings = bench.settings_from(args)
    assert (settings.candidate_weight, settings.shadow_percent) == (0, 0)
    _, base = bench.base_config(settings, gpu=False)
    canary = sides.applications(base, "models/artifacts/fraud-v2", "/tmp/x.db", 0.0, 0, 0)[2]
    rollout = next(d for d in canary["deployments"] if d["name"] == "Ingress")["user_config"]["rollout"]
    assert (rollout["candidate_weight"], rollout["shadow_percent"]) == (0, 0)

    json_path, md_path, _ = bench.write(payload(gpu=False, settings=settings), tmp_path)

    assert json_path.stem.startswith("bench-quick-canary0-shadow0-")
    assert "canary = canary-serve, stable 100 / candidate 0, shadow 0 %" in md_path.read_text()
    assert (
        json.loads(json_path.read_text())["sides"]["canary"]
        == "canary-serve, stable 100 / candidate 0, shadow 0 %"
    )


def test_every_progress_step_is_counted():
    assert bench.steps(bench.QUICK) == 2 * (2 + 1 + 3 * (1 + 2 + 1))
    assert bench.steps(bench.FULL) == 2 * (5 + 1 + 3 * (1 + 3 * 4 + 1))  # three rounds of four points


def with_rounds(data, throughput):
    """``data`` re-analysed as if each side's closed runs had been measured in rounds with these req/s."""
    m = data["models"]["m"]
    for key, per_point in throughput.items():
        runs = [
            [{**point, "throughput": t} for t in values]
            for point, values in zip(m["sides"][key]["closed"], per_point, strict=True)
        ]
        m["sides"][key]["closed"] = [bench.median_round(r) for r in runs]
    return bench_report.analyse(data, gpu=False)


def test_a_point_measured_in_rounds_keeps_its_median_round_and_every_rounds_numbers():
    runs = [
        {**run(8, t, p50), "cpu_ms_per_request": {"proxy": t}} for t, p50 in ((90, 30), (70, 40), (80, 35))
    ]
    point = bench.median_round(runs)
    assert (
        point["throughput"] == 80 and point["p50_ms"] == 35 and point["cpu_ms_per_request"] == {"proxy": 80}
    )
    assert [r["throughput"] for r in point["rounds"]] == [90, 70, 80]
    assert point["rounds"][1] == {"throughput": 70, "p50_ms": 40, "p95_ms": 80, "p99_ms": 120}
    assert bench.median_round(runs[:2])["throughput"] == 70  # an even count: the lower middle round


def test_ratios_over_rounds_are_the_median_of_each_rounds_own_ratio_with_their_range():
    # The host slows down in round 2 for every side: paired by round, canary stays at 0.96-0.98 of two-hop,
    # while the ratio of the sides' median rounds (80 / 100) would read 0.80.
    data = with_rounds(
        payload(gpu=False),
        {
            "direct": [(100, 50, 100), (400, 200, 400)],
            "two-hop": [(100, 50, 100), (300, 150, 300)],
            "canary": [(96, 49, 97), (291, 144, 288)],
        },
    )
    m = data["models"]["m"]
    one, eight = m["ratios"]
    assert one["rounds"] == 3 and one["throughput_vs_two_hop"] == pytest.approx(0.97)
    assert one["throughput_vs_two_hop_range"] == pytest.approx([0.96, 0.98])
    assert eight["throughput_vs_two_hop"] == pytest.approx(0.96)
    assert m["goals"]["throughput_vs_two_hop_every_concurrency"]["value"] == pytest.approx(0.96)
    assert m["goals"]["throughput_vs_two_hop_every_concurrency"]["met"] is True
    text = bench_report.markdown({**data, "settings": {**data["settings"], "rounds": 3}})
    assert "| 1 | 0.97× (0.96–0.98) | 0.97× (0.96–0.98) |" in text
    assert "median of the rounds' own ratios" in text


def test_one_round_gives_single_ratios_and_no_range():
    (one, _) = payload(gpu=False)["models"]["m"]["ratios"]
    assert one["rounds"] == 1 and one["throughput_vs_two_hop_range"] is None


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--concurrency", "0,8"], "--concurrency"),
        (["--concurrency", "eight"], "--concurrency"),
        (["--seconds", "-1"], "--seconds"),
        (["--warmup", "nan"], "--warmup"),
        (["--open-load", "0"], "--open-load"),
        (["--models", "fraud,nope"], "--models"),
        (["--raw-batch-sizes", ""], "--raw-batch-sizes"),
        (["--config", "configs/nope.yaml"], "--config"),
        (["--config", "Makefile"], "--config"),
        (["--out", "README.md"], "--out"),
        (["--canary-weight", "101"], "--canary-weight"),
        (["--canary-shadow", "-5"], "--canary-shadow"),
        (["--rounds", "0"], "--rounds"),
        (["--rounds", "two"], "--rounds"),
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag_without_a_traceback(argv, flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["bench", *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err and err.startswith("usage: canary bench")


def test_flags_replace_single_fields_of_the_preset():
    args = bench.parser().parse_args(
        ["--quick", "--models", "text", "--concurrency", "2,16", "--seconds", "3", "--rounds", "2"]
    )
    settings = bench.settings_from(args)
    assert settings.quick and settings.concurrency == (2, 16) and settings.seconds == 3
    assert settings.rounds == 2 and bench.QUICK.rounds == 1
    assert settings.models == ("models/artifacts/text-v1",) and settings.warmup_s == bench.QUICK.warmup_s
    assert bench.settings_from(bench.parser().parse_args([])) == bench.FULL


def test_harness_closed_loop_keeps_its_result_and_counts_failures(monkeypatch):
    seen = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(503 if len(seen) % 4 == 0 else 200)

    def on_fake_server(url, body, **kwargs):
        return asyncio.run(loadgen.run_closed(url, body, transport=httpx.MockTransport(handler), **kwargs))

    monkeypatch.setattr(loadgen, "closed_loop", on_fake_server)
    # a window long enough that a stalled machine (a CI run, right after the Ray suites) still fills it
    result = harness.closed_loop(
        "http://127.0.0.1:9", lambda rng: {"x": 1}, concurrency=2, duration_s=1.0, warmup_s=0.2, path="/p"
    )
    assert isinstance(result, harness.LoadResult) and set(seen) == {"/p"}
    assert result.requests > 0 and 0 < result.non_2xx < result.requests
    assert result.throughput == pytest.approx((result.requests - result.non_2xx) / 1.0, rel=0.5)


def test_a_run_stopped_after_its_first_model_has_already_written_that_model(monkeypatch, tmp_path):
    measured = iter([model("text_transformer", (78.0, 290.0)), model("fraud_mlp", (90.0, 310.0))])
    monkeypatch.setattr(bench, "has_gpu", lambda: False)
    monkeypatch.setattr(bench, "run_model", lambda *args: next(measured))
    written = []

    final = bench.run_suite(
        bench.QUICK, port=1, on_partial=lambda p: written.append(bench.write(p, tmp_path))
    )

    assert len(written) == 1  # after the first model only; the last model's results are the final payload
    json_path, md_path, _ = written[0]
    saved = json.loads(json_path.read_text())
    assert list(saved["models"]) == ["text_transformer-v1"] and saved["partial"] == "1 of 2 models measured"
    assert saved["models"]["text_transformer-v1"]["goals"]
    assert "Partial run:** 1 of 2 models measured" in md_path.read_text()
    assert list(final["models"]) == ["text_transformer-v1", "fraud_mlp-v1"] and "partial" not in final
