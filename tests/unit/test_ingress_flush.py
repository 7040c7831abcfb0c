"""Telemetry reaches the controller once: a flush whose call timed out at the Ingress but ran at the
controller anyway is sent again unchanged, under its number, and the controller drops the copy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fake_ingress import make_ingress, patch_serve

from rollout.state import TelemetryState
from rollout.store import RolloutStore
from rollout.supervisor import RolloutSupervisor


class _Call:
    def __init__(self, coro: Any) -> None:
        self._coro = coro

    def __await__(self) -> Any:
        return self._coro.__await__()


class SlowController:
    """Applies every flush to a real supervisor; while ``answer_late``, its answer comes too late for the
    Ingress (the call ran, the replica stopped waiting)."""

    def __init__(self, supervisor: RolloutSupervisor) -> None:
        self.supervisor, self.answer_late, self.calls = supervisor, False, 0

    @property
    def ingest(self) -> SlowController:
        return self

    def remote(self, replica_id: str, window: dict[str, Any], in_flight: int, *rows: Any, **kw: Any) -> _Call:
        async def run() -> None:
            self.calls += 1
            self.supervisor.ingest(replica_id, window, in_flight, *rows, **kw)
            if self.answer_late:
                await asyncio.sleep(60)

        return _Call(run())


def served(ingress: Any, n: int) -> None:
    for _ in range(n):
        ingress._window.arm("stable").record("ok", 0.01)


def test_a_flush_that_ran_after_the_ingress_gave_up_is_counted_once(monkeypatch, tmp_path: Path) -> None:
    patch_serve(monkeypatch)
    supervisor = RolloutSupervisor("canary", RolloutStore(tmp_path / "r.db", clock=lambda: 0.0), lambda: 0.0)
    controller = SlowController(supervisor)

    async def scenario() -> None:
        ingress = make_ingress()
        ingress._controller = controller
        served(ingress, 5)
        controller.answer_late = True
        await ingress._flush(timeout_s=0.05)  # ran there; no answer here
        assert ingress._flush_failures == 1 and ingress._unsent is not None
        served(ingress, 3)  # served meanwhile: the next flush, not merged into the one in doubt
        controller.answer_late = False
        await ingress._flush()
        assert ingress._unsent is None and ingress._window.arm("stable").requests == 0
        assert controller.calls == 3  # the first flush twice, then the three served since

    asyncio.run(scenario())
    assert supervisor.telemetry.total.arm("stable").requests == 8
    assert supervisor.telemetry.duplicates == 1


def test_a_flush_number_at_or_below_the_last_counted_is_a_copy() -> None:
    state = TelemetryState()
    assert state.first_delivery(["a", 1]) and state.first_delivery(["a", 2])
    assert not state.first_delivery(["a", 2]) and not state.first_delivery(["a", 1])  # a late first call
    assert state.first_delivery(["b", 1])  # another incarnation of a replica counts on its own
    assert state.first_delivery(None) and state.first_delivery(None)  # an older Ingress numbers nothing
    assert state.first_delivery(["a", True]) and state.first_delivery("a-3")  # not a number: counted
    assert state.duplicates == 2
