"""The ``canary`` command: ``up``, ``down``, ``deploy``, ``validate``, ``demo``, ``traffic``, ``bench``, and
the operators' commands in `rollout.operate` (``status``, ``pause``, ``resume``, ``promote``, ``rollback``,
``set-weight``, ``acknowledge``, ``report``, ``finalize``)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from typing import Any

from rollout.cluster import (
    SERVE_URL,
    ClusterError,
    LocalHead,
    check_dashboard,
    dashboard_address,
    last_error_line,
    serve_deploy,
    serve_status_message,
    wait_for,
)
from rollout.operate import OperatorError, UsageError, add_commands
from serving import admintoken
from serving.errors import InvalidConfigError

DEFAULT_CONFIG = "configs/demo.yaml"


def _validate(path: str, artifacts: bool = True) -> dict[str, Any]:
    from rollout.configfile import (  # Ray and torch: only for the commands needing them
        check_config,
        load_config,
    )

    config = load_config(path)
    check_config(config, source=path, artifacts=artifacts)
    return config


def _deploy_failed(result: subprocess.CompletedProcess[str], verbose: bool) -> int:
    """Reports a failed ``serve deploy``: the line saying why, or with ``--verbose`` all Ray printed."""
    if verbose:
        sys.stderr.write(result.stdout + result.stderr)
    else:
        print(
            f"error: `serve deploy` failed: {last_error_line(result.stderr or result.stdout)} "
            "(--verbose shows Ray's full output)",
            file=sys.stderr,
        )
    return result.returncode


def _admin_token_location(config: dict[str, Any]) -> str:
    """Where the admin token the Ingress checks lives, creating ``.canary/admin-token`` when that is it."""
    if os.environ.get(admintoken.TOKEN_ENV, "").strip():
        return f"${admintoken.TOKEN_ENV}"
    for app in config.get("applications") or []:
        ingress: dict[str, Any] = next(
            (d for d in app.get("deployments") or [] if d.get("name") == "Ingress"), {}
        )
        named = (ingress.get("user_config") or {}).get("admin_token_file")
        if named:
            return f"{named} (admin_token_file in the config)"
    admintoken.admin_token()
    return str(admintoken.DEFAULT_TOKEN_FILE)


def cmd_validate(args: argparse.Namespace) -> int:
    _validate(args.config)
    print(f"{args.config}: valid")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    _validate(args.config, artifacts=not args.skip_artifact_check)
    check_dashboard(args.address)
    result = serve_deploy(args.config, args.address)
    if result.returncode != 0:
        return _deploy_failed(result, args.verbose)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from rollout.configfile import serve_url

    config = _validate(args.config)
    url = serve_url(config, source=args.config)
    token_location = _admin_token_location(config)
    head = LocalHead()  # always the local head, at its own address: $RAY_DASHBOARD_ADDRESS is for `deploy`
    started = head.start(num_cpus=args.num_cpus)
    print("Ray head started" if started else "Ray head already running; deploying into it")
    result = serve_deploy(args.config)
    if result.returncode != 0:
        return _deploy_failed(result, args.verbose)
    if not wait_for(f"{url}/healthz", args.timeout):
        print(f"{url}/healthz did not answer 200 within {args.timeout:.0f}s", file=sys.stderr)
        print(serve_status_message(), file=sys.stderr)
        return 1
    print(f"canary-serve is up: {url}/predict  (GET {url}/rollout, {url}/healthz)")
    print(f"admin token (for `canary pause`, `promote`, ... and the dashboard): {token_location}")
    return 0


def cmd_down(_: argparse.Namespace) -> int:
    print(
        "stopped the Ray head `canary up` started"
        if LocalHead().stop()
        else "no Ray head started by `canary up`"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from rollout.demo import run_demo

    return run_demo(args.config, stage_timeout_s=args.timeout, concurrency=args.concurrency, keep=args.keep)


def cmd_traffic(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from rollout.demo import render
    from rollout.traffic import drive

    with Live(console=Console(), refresh_per_second=2) as live:
        stats = drive(
            args.url,
            requests=args.requests,
            duration_s=args.duration,
            concurrency=args.concurrency,
            on_tick=lambda s: live.update(render(s, args.url)),
        )
        live.update(render(stats, args.url))
    return 0 if stats.statuses[200] == stats.total else 1


def cmd_bench(argv: list[str]) -> int:
    try:
        from benchmarks.bench import main as bench  # Ray and torch: only when it runs
    except ModuleNotFoundError as exc:
        if exc.name != "benchmarks":
            raise
        print(
            "error: `canary bench` runs the suite in benchmarks/, which ships with a source checkout of "
            "canary-serve, not with an installed package; run it from the checkout (`make bench`)",
            file=sys.stderr,
        )
        return 2
    return bench(argv, prog="canary bench")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canary", description="canary-serve: model rollouts on Ray Serve")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("validate", help="check a Serve config (every canary key) without deploying it")
    s.add_argument("config")
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("deploy", help="validate a Serve config, then `serve deploy` it")
    s.add_argument("config")
    s.add_argument(
        "--address",
        default=dashboard_address(),  # read when the command runs, as Ray's `serve deploy` does
        help="Ray dashboard address (default: $RAY_DASHBOARD_ADDRESS, else http://127.0.0.1:8265)",
    )
    s.add_argument("--verbose", action="store_true", help="print all `serve deploy` printed when it fails")
    s.add_argument(
        "--skip-artifact-check",
        action="store_true",
        help="the artifacts live on the cluster's nodes, not here: check the args' shape only (the "
        "application's build on the cluster checks the artifacts and their checksums)",
    )
    s.set_defaults(func=cmd_deploy)

    s = sub.add_parser("up", help="start a local Ray head, deploy a config, wait for /healthz")
    s.add_argument("--config", default=DEFAULT_CONFIG)
    s.add_argument("--num-cpus", type=int, default=None)
    s.add_argument("--timeout", type=float, default=240.0)
    s.add_argument("--verbose", action="store_true", help="print all `serve deploy` printed when it fails")
    s.set_defaults(func=cmd_up)

    s = sub.add_parser("down", help="stop the Ray head `canary up` started (and nothing else)")
    s.set_defaults(func=cmd_down)

    s = sub.add_parser(
        "demo", help="the main job: an automatic rollout that promotes, then a bad one that is rolled back"
    )
    s.add_argument("--config", default="configs/demo-rollout.yaml")
    s.add_argument("--timeout", type=float, default=900.0, help="seconds each rollout may take at most")
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--keep", action="store_true", help="leave the Ray head running afterwards")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("traffic", help="send bounded demo traffic to a running canary-serve (loopback only)")
    s.add_argument("--url", default=SERVE_URL)
    s.add_argument("--requests", type=int, default=2000)
    s.add_argument("--duration", type=float, default=30.0)
    s.add_argument("--concurrency", type=int, default=8)
    s.set_defaults(func=cmd_traffic)

    s = sub.add_parser(
        "bench",
        help="the throughput suite: raw model vs plain Ray Serve vs canary-serve (`canary bench -h`)",
        add_help=False,
    )
    s.add_argument("args", nargs=argparse.REMAINDER)
    s.set_defaults(func=lambda a: cmd_bench(a.args))
    add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its flags are the suite's own, parsed by benchmarks.bench
        return cmd_bench(argv[1:])
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (InvalidConfigError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ClusterError, OperatorError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a file or directory the command reads or writes
        print(f"error: {_os_error_line(exc)}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        command = " ".join(os.path.basename(str(a)) for a in list(exc.cmd)[:2])
        print(f"error: `{command}` did not finish within {exc.timeout:.0f}s", file=sys.stderr)
        return 1


def _os_error_line(exc: OSError) -> str:
    if exc.filename is None:
        return str(exc)
    paths = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else str(exc.filename)
    return f"{paths}: {exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())
