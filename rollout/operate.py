"""The operators' commands of the ``canary`` CLI: ``status``, ``pause``, ``resume``, ``promote``,
``rollback``, ``set-weight``, ``acknowledge``, ``report`` and ``finalize``. Each talks to the running Ingress
over HTTP with the admin bearer token; every action needs a reason and is recorded with who gave it."""

from __future__ import annotations

import argparse
import base64
import copy
import getpass
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from rollout.cluster import SERVE_URL
from rollout.status_view import status_text
from serving.admintoken import admin_token


class OperatorError(RuntimeError):
    """The server refused an operator command or could not be reached; the message says why."""


class UsageError(OperatorError):
    """A command-line argument cannot be used (the ``canary`` command exits 2); the message names it."""


def _get(url: str, path: str, headers: dict[str, str] | None = None, timeout: float = 30.0) -> Any:
    try:
        response = httpx.get(url + path, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise OperatorError(f"cannot reach {url}{path}: {exc!r}; is canary-serve up (`make up`)?") from None
    if response.status_code != 200:
        raise OperatorError(f"{path} answered {response.status_code}: {response.text[:500]}")
    return response.json()


def _act(
    url: str, action: str, reason: str, actor: str | None, weight: float | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"reason": reason, "actor": actor or getpass.getuser()}
    if weight is not None:
        body["weight"] = weight
    try:
        response = httpx.post(
            f"{url}/admin/{action}",
            json=body,
            headers={"Authorization": f"Bearer {admin_token()}"},
            timeout=30,
        )
    except httpx.HTTPError as exc:
        raise OperatorError(f"cannot reach {url}: {exc!r}; is canary-serve up (`make up`)?") from None
    data = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    if response.status_code != 200:
        raise OperatorError(
            f"{action} refused ({response.status_code}): {data.get('detail', response.text[:300])}"
        )
    return dict(data)


def cmd_status(args: argparse.Namespace) -> int:
    state = _get(args.url, "/rollout")
    print(status_text(state, now=time.time(), width=args.width))
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    result = _act(args.url, args.command, args.reason, args.actor, getattr(args, "weight", None))
    for event in result.get("events", []):
        print(
            f"{event['kind']}: {event['from']} → {event['to']} (weight {event['weight']:g}%, "
            f"shadow {event['shadow_percent']:g}%) by {event['actor']}: {event['reason']}"
        )
    state = result.get("state", {})
    print(
        f"stage: {state.get('stage')}  weight: {state.get('candidate_weight')}%  "
        f"shadow: {state.get('shadow_percent')}%"
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:  # before the report is fetched (up to 2 minutes), not after
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot create that directory ({exc.strerror})") from None
    data = _get(args.url, "/admin/report", headers={"Authorization": f"Bearer {admin_token()}"}, timeout=120)
    (out / "report.md").write_text(data["markdown"])
    (out / "report.html").write_text(data["html"])
    for name, encoded in data["images"].items():
        (out / Path(name).name).write_bytes(base64.b64decode(encoded))
    print(f"wrote {out / 'report.md'} and {out / 'report.html'} ({len(data['images'])} plots)")
    if args.acknowledge:
        _act(args.url, "acknowledge", args.acknowledge, args.actor)
        print("acknowledged: the rollout is closed")
    return 0


def next_config(config: dict[str, Any], default_args: dict[str, Any]) -> dict[str, Any]:
    """The config after a promotion: stable := candidate, manual routing at weight 0, no rollout id.

    Args:
        config: the Serve config that was rolled out.
        default_args: the application ``args`` Ray passes to the builder when the config gives none
            (`serving.app.DEFAULT_ARGS`); the next config names its arms explicitly.
    """
    from rollout.configfile import CANARY_IMPORT_PATH, is_canary_app  # pydantic models: only when needed

    result = copy.deepcopy(config)
    found = False
    for i, app in enumerate(result.get("applications") or []):
        if not is_canary_app(app):
            continue
        found = True
        args = copy.deepcopy(app.get("args") or default_args)  # as `serving.app.check_args` reads them
        if not isinstance(args, dict) or not isinstance(args.get("candidate"), dict):
            raise OperatorError(f"applications[{i}].args names no candidate to make stable")
        app["args"] = {**args, "stable": copy.deepcopy(args["candidate"])}
        for dep in app.get("deployments") or []:
            rollout = (dep.get("user_config") or {}).get("rollout")
            if dep.get("name") == "Ingress" and isinstance(rollout, dict):
                rollout["mode"] = "manual"
                rollout["candidate_weight"] = 0
                for key in ("shadow_percent", "rollout_id"):
                    rollout.pop(key, None)
            if dep.get("name") == "candidate" and isinstance(dep.get("user_config"), dict):
                dep["user_config"].pop("faults", None)
    if not found:
        raise OperatorError(f"no application with import_path {CANARY_IMPORT_PATH} in the config")
    return result


def cmd_finalize(args: argparse.Namespace) -> int:
    state = _get(args.url, "/rollout")
    if state.get("outcome") != "promoted":
        raise OperatorError(f"only a promoted rollout is finalized; it is {state.get('stage')}")
    if state.get("stage") == "awaiting_review":
        raise OperatorError(
            "high impact: read and acknowledge the report first (`canary report --acknowledge`)"
        )
    from rollout.configfile import (  # imports Ray and torch: only when needed
        check_config,
        is_canary_app,
        load_config,
    )
    from serving.app import DEFAULT_ARGS

    source = Path(args.config)
    target = Path(args.out) if args.out else source.with_name(source.stem + ".next.yaml")
    config = next_config(load_config(source), DEFAULT_ARGS)
    check_config(config, source=str(target))
    if not target.parent.is_dir():
        raise UsageError(f"--out {target}: {target.parent} is not a directory")
    stable = [app["args"]["stable"] for app in config["applications"] if is_canary_app(app)]
    # Nothing is left behind unless every step succeeds: the text goes to a file beside the target, the
    # rollout is acknowledged, and only then does that file become the target.
    pending = target.with_name(f".{target.name}.pending")
    pending.write_text(
        f"# written by `canary finalize` from {source.name} after rollout {state.get('rollout_key')} "
        "was promoted\n" + yaml.safe_dump(config, sort_keys=False)
    )
    try:
        if state.get("stage") != "closed":
            _act(args.url, "acknowledge", f"finalized: wrote {target.name}", args.actor)
        pending.replace(target)
    finally:
        pending.unlink(missing_ok=True)
    print(f"wrote {target}: stable := {', '.join(str(s) for s in stable)}")
    print(f"deploy it when ready: canary deploy {target}")
    return 0


def add_commands(sub: Any) -> None:
    """Registers the operator commands on the ``canary`` parser's subparsers."""

    def common(s: argparse.ArgumentParser) -> None:
        s.add_argument("--url", default=SERVE_URL, help="canary-serve's HTTP address")
        s.add_argument("--actor", default=None, help="who acts (default: your user name)")

    s = sub.add_parser("status", help="the rollout: stage, weights, each gate's verdict and evidence")
    s.add_argument("--url", default=SERVE_URL)
    s.add_argument("--width", type=int, default=120)
    s.set_defaults(func=cmd_status)
    for name, text in (
        ("pause", "stop the automation where it is (routing stays)"),
        ("resume", "restart the automation at the current stage"),
        ("promote", "go to the next stage now, or grant an awaited approval"),
        ("rollback", "route everything to stable now (weight 0, shadow off)"),
        ("acknowledge", "acknowledge the post-rollout review; closes the rollout"),
    ):
        s = sub.add_parser(name, help=text)
        common(s)
        s.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
        s.set_defaults(func=cmd_action)
    s = sub.add_parser("set-weight", help="route this percent to the candidate (pauses an automatic rollout)")
    common(s)
    s.add_argument("weight", type=float)
    s.add_argument("--reason", required=True)
    s.set_defaults(func=cmd_action)
    s = sub.add_parser("report", help="write the post-rollout report (Markdown, HTML, plots)")
    common(s)
    s.add_argument("--out", default="reports/latest")
    s.add_argument("--acknowledge", metavar="REASON", help="also acknowledge the review with this reason")
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("finalize", help="write the next config (stable := candidate) after a promotion")
    common(s)
    s.add_argument("config", help="the config that was rolled out")
    s.add_argument("--out", default=None, help="where to write it (default: <config>.next.yaml)")
    s.set_defaults(func=cmd_finalize)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the `canary` command")
