"""A real `Ingress` object without Ray: the deployment's own class with fake model handles and a fake
rollout controller at its seams, served through its own ASGI app (`HotRoute` + the FastAPI app)."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from fastapi.testclient import TestClient
from ray import serve
from ray.serve import context as serve_context

from rollout.policy import rollout_key
from rollout.supervisor import config_hash
from serving.ingress import Ingress

# Serve wraps the class it is given; the class as written is the next one in the MRO. Its methods keep
# globals of their own, which is where the controller lookups are patched.
IngressClass: type = Ingress.func_or_class.__mro__[1]
INGRESS_GLOBALS: dict[str, Any] = IngressClass.reconfigure.__globals__

FEATURES = {"features": [0.1] * 30}
VERSIONS = {"stable": "fraud-v1", "candidate": "fraud-v2"}


class _Replica:
    """Serve's ReplicaContext, as far as the Ingress and its FastAPI routes read it."""

    app_name = "test"
    servable_object: Any = None  # the Ingress the FastAPI routes are bound to

    class replica_id:  # the shape of Serve's ReplicaContext
        unique_id = "r1"


_REPLICA = _Replica()


class _Response:
    def __init__(self, coro: Any) -> None:
        self._coro = coro

    def __await__(self) -> Any:
        return self._coro.__await__()

    def cancel(self) -> None:
        self._coro.close()


class _Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any, **kwargs: Any) -> _Response:
        return _Response(self._fn(*args, **kwargs))


class FakeModel:
    """A model deployment's handle: answers `predict` with ``answer`` (or the seed answer)."""

    def __init__(self, version: str, answer: dict[str, Any] | None = None) -> None:
        self.version = version
        self.answer = answer

    async def _predict(self, inputs: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
        if self.answer is not None:
            return dict(self.answer)
        return {"prediction": "legit", "confidence": 0.9, "model_version": self.version}

    async def _predict_many(self, inputs: list[Any], headers: list[Any]) -> list[Any]:
        return [await self._predict(i, h) for i, h in zip(inputs, headers, strict=True)]

    async def _info(self) -> dict[str, str]:
        return {"model_version": self.version}

    def options(self, method_name: str) -> _Method:
        return _Method(getattr(self, "_" + method_name))

    def __getattr__(self, name: str) -> _Method:
        if name in ("predict", "predict_many", "info"):
            return _Method(getattr(self, "_" + name))
        raise AttributeError(name)


class FakeController:
    """The rollout controller as the Ingress sees it. Like `RolloutSupervisor.configure`, a config with the
    hash it already has gets its current table back, unchanged; ``refuse`` makes it raise (store hung)."""

    def __init__(self, candidate_weight: float = 5.0, shadow_percent: float = 10.0) -> None:
        self.weight, self.shadow = candidate_weight, shadow_percent
        self.hash: str | None = None
        self.table: dict[str, Any] = {}
        self.refuse = False
        self.configure = _Method(self._configure)
        self.watch = _Method(self._watch)
        self.ingest = _Method(self._ingest)
        self.feedback = _Method(self._feedback)

    async def _configure(self, section: dict[str, Any], versions: dict[str, str]) -> dict[str, Any]:
        if self.refuse:
            raise TimeoutError("the store did not answer within 8 s")
        digest = config_hash(section, versions)
        if digest != self.hash:
            self.hash = digest
            self.table = {
                "version": self.table.get("version", 0) + 1,
                "key": rollout_key("test", section.get("rollout", {}).get("rollout_id"), versions),
                "mode": "auto",
                "stage": "canary",
                "candidate_weight": self.weight,
                "shadow_percent": self.shadow,
                "published_at": 0.0,
            }
        return dict(self.table)

    async def _watch(self, known: int, timeout: float) -> dict[str, Any]:
        await asyncio.sleep(3600)  # nothing new: the long poll hangs, as it does between changes
        return dict(self.table)

    async def _ingest(self, *args: Any, **kwargs: Any) -> None:
        return None

    async def _feedback(self, request_id: str, metric: str, value: float) -> tuple[int, dict[str, Any]]:
        return 404, {"error": "unknown_request_id", "detail": request_id}


def _no_ray(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("tests/unit: the Ingress must not look up a real controller")


def patch_serve(monkeypatch: pytest.MonkeyPatch, controller: FakeController | None = None) -> None:
    """Serve's replica and request context, and the controller lookups, for an Ingress built here."""
    ids = itertools.count()
    monkeypatch.setattr(serve, "get_replica_context", lambda: _REPLICA)
    monkeypatch.setattr(
        serve_context,
        "_get_serve_request_context",
        lambda: serve_context._RequestContext(request_id=f"req-{next(ids)}"),
    )

    async def ensure(*args: Any, **kwargs: Any) -> FakeController:
        if controller is None:
            _no_ray()
        return controller

    monkeypatch.setitem(INGRESS_GLOBALS, "ensure_controller", ensure)
    for name in ("get_or_create_controller", "find_controller"):
        monkeypatch.setitem(INGRESS_GLOBALS, name, _no_ray)


def make_ingress(stable: FakeModel | None = None, candidate: FakeModel | None = None) -> Any:
    """An Ingress with the default config (manual, weight 0) over two fake models; `patch_serve` first."""
    ingress = object.__new__(IngressClass)
    IngressClass.__init__(
        ingress,
        stable or FakeModel(VERSIONS["stable"]),
        candidate or FakeModel(VERSIONS["candidate"]),
        {"kind": "features", "length": 30},
        VERSIONS,
    )
    _REPLICA.servable_object = ingress
    return ingress


def client(ingress: Any) -> TestClient:
    return TestClient(ingress.__serve_build_asgi_app__(), raise_server_exceptions=False)
