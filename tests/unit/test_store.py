"""The rollout store: round trips, state + event in one transaction, SIGKILL safety, retention, schemas.

Every behaviour is checked on both backends: SQLite, and a real PostgreSQL server the module starts
(`tests/postgres_server.py`; skipped where PostgreSQL is not installed, a failure under CI).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from postgres_server import PostgresServer, postgres_server

from rollout.store import (
    SCHEMA_VERSION,
    LoggedRequest,
    Retention,
    RolloutStore,
    SchemaVersionError,
    StoreError,
    UnknownRolloutError,
)
from serving.segments import ALL
from serving.telemetry import Window

ROOT = Path(__file__).resolve().parents[2]
KEY = "fraud/r1/v1->v2"


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    yield from postgres_server()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_location(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str | Path]:
    """Makes locations of fresh, empty stores of the backend under test (a file, or a new database)."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres")
        return server.create_database
    names = itertools.count()
    return lambda: tmp_path / "deep" / "dir" / f"rollout{next(names)}.db"


@pytest.fixture
def store(new_location: Callable[[], str | Path], clock: FakeClock):
    with RolloutStore(new_location(), clock=clock) as s:
        s.save_rollout(KEY, app="fraud", policy={"owner": "ml@example.com"}, state={"stage": "shadow"})
        yield s


@pytest.fixture
def sqlite_store(tmp_path: Path, clock: FakeClock):
    with RolloutStore(tmp_path / "deep" / "dir" / "rollout.db", clock=clock) as s:
        s.save_rollout(KEY, app="fraud", policy={"owner": "ml@example.com"}, state={"stage": "shadow"})
        yield s


def real_window(start: float, seed: int = 0) -> Window:
    """A window with every kind of content: sketches, fields, feedback, segments, shadow comparisons."""
    w = Window(start=start, end=start + 1.0)
    for i in range(40):
        arm = "candidate" if i % 4 == 0 else "stable"
        status = ("ok", "ok", "ok", "error", "timeout", "overloaded", "contract")[(i + seed) % 7]
        latency = 0.003 + ((i * 7919 + seed) % 97) / 1000
        for segment in (ALL, ("tier", "gold" if i % 3 else "free")):
            w.arm(arm, segment).record(status, latency, {"confidence": (i % 10) / 10, "tokens": float(i)})
        w.arm(arm).record_feedback("human_review_score", 0.9 - i / 1000)
        if i % 2:
            w.arm("shadow").record("ok", latency * 1.1)
            sh = w.shadow_in()
            sh.mirrored += 1
            sh.completed += 1
            sh.compare(
                {"prediction": 1, "confidence": 0.8}, {"prediction": i % 3, "confidence": 0.7 + i / 400}
            )
    return w


def test_opens_in_wal_mode_with_foreign_keys_and_creates_parent_dirs(sqlite_store: RolloutStore):
    assert sqlite_store.path is not None and sqlite_store.path.exists()
    conn = sqlite3.connect(sqlite_store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


def test_a_write_naming_an_unknown_rollout_is_refused(store: RolloutStore):
    with pytest.raises(UnknownRolloutError, match="never-saved"):
        store.append_event("never-saved", {"ts": 1.0, "kind": "x"})


def test_rollout_upsert_keeps_created_and_moves_updated(store: RolloutStore, clock: FakeClock):
    first = store.load_rollout(KEY)
    assert first is not None and first.created == first.updated == 1000.0
    clock.now = 1010.0
    store.save_rollout(
        KEY, app="fraud", policy={"owner": "b"}, state={"stage": "1%", "weights": [0.99, 0.01]}
    )
    again = store.load_rollout(KEY)
    assert again is not None
    assert (again.created, again.updated) == (1000.0, 1010.0)
    assert again.policy == {"owner": "b"} and again.state == {"stage": "1%", "weights": [0.99, 0.01]}
    assert store.load_rollout("missing") is None


def test_latest_and_listing_order(store: RolloutStore, clock: FakeClock):
    clock.now = 2000.0
    store.save_rollout("fraud/r2", app="fraud", policy={}, state={"stage": "shadow"})
    store.save_rollout("text/r1", app="text", policy={}, state={})
    clock.now = 3000.0
    store.save_state_and_event(KEY, {"stage": "5%"}, {"ts": 3000.0, "kind": "promote"})
    latest = store.latest_rollout("fraud")
    assert latest is not None and latest.key == KEY  # most recently *updated*
    assert [r.key for r in store.rollouts()] == ["text/r1", "fraud/r2", KEY]  # newest created first
    assert [r.key for r in store.rollouts("fraud")] == ["fraud/r2", KEY]
    assert [r.key for r in store.rollouts("fraud", limit=1)] == ["fraud/r2"]
    assert store.latest_rollout("nope") is None


def test_events_are_numbered_in_order_and_round_trip(store: RolloutStore):
    evidence = {"stable": {"n": 120, "estimate": 0.012, "lower": 0.0, "upper": float("inf")}, "rule": "≤ 1%"}
    seqs = [
        store.append_event(KEY, {"ts": 1.0 + i, "kind": "decision", "reason": f"r{i}", "evidence": evidence})
        for i in range(5)
    ]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    events = store.events(KEY)
    assert [e["seq"] for e in events] == seqs
    assert events[2] == {"seq": seqs[2], "ts": 3.0, "kind": "decision", "reason": "r2", "evidence": evidence}
    assert [e["seq"] for e in store.events(KEY, since_seq=seqs[1], limit=2)] == seqs[2:4]
    with pytest.raises(ValueError, match="'kind'"):
        store.append_event(KEY, {"ts": 1.0})


def test_calls_from_a_thread_pool_serialise(store: RolloutStore):
    def work(i: int) -> int:
        store.log_requests(KEY, [(f"t{i}", float(i), "stable", [])])
        return store.append_event(KEY, {"ts": float(i), "kind": "tick"})

    with ThreadPoolExecutor(8) as pool:
        seqs = list(pool.map(work, range(200)))
    assert len(set(seqs)) == 200 and len(store.events(KEY)) == 200
    assert store.stats()["rows"]["requests"] == 200


def test_a_write_failing_halfway_rolls_back_and_the_store_stays_usable(store: RolloutStore):
    # the state UPDATE runs before the event is encoded: the encoding failure must undo it
    with pytest.raises(TypeError):
        store.save_state_and_event(KEY, {"stage": "50%"}, {"ts": 1.0, "kind": "k", "evidence": object()})
    record = store.load_rollout(KEY)
    assert record is not None and record.state == {"stage": "shadow"}
    assert store.events(KEY) == []
    assert store.save_state_and_event(KEY, {"stage": "1%"}, {"ts": 2.0, "kind": "promote"}) >= 1


def test_state_and_event_are_one_transaction(store: RolloutStore):
    seq = store.save_state_and_event(KEY, {"stage": "rolled_back"}, {"ts": 5.0, "kind": "rollback"})
    record = store.load_rollout(KEY)
    assert record is not None and record.state == {"stage": "rolled_back"}
    assert store.events(KEY)[-1]["seq"] == seq
    with pytest.raises(UnknownRolloutError):
        store.save_state_and_event("missing", {"stage": "x"}, {"ts": 6.0, "kind": "x"})
    assert len(store.events(KEY)) == 1  # the failed call left no event behind


def test_real_windows_round_trip_exactly_and_merge(store: RolloutStore):
    windows = [real_window(100.0 + i, seed=i) for i in range(5)]
    for i, w in enumerate(windows):
        store.append_window(KEY, "shadow" if i < 2 else "1%", w)
    got = store.windows(KEY)
    assert [stage for stage, _ in got] == ["shadow", "shadow", "1%", "1%", "1%"]
    assert [w for _, w in got] == windows
    assert [w for _, w in store.windows(KEY, since=102.0)] == windows[2:]
    expected = Window()
    for w in windows:
        expected.merge(w)
    assert store.merged_window(KEY) == expected
    assert store.merged_window(KEY, since=1e9).empty()


_keys = itertools.count()
_floats = st.floats(min_value=1e-5, max_value=100, allow_nan=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.sampled_from(["stable", "candidate", "shadow"]),
            st.sampled_from([ALL, ("tier", "gold"), ("tenant", "ü<&>\"'")]),
            st.sampled_from(["ok", "error", "timeout", "overloaded", "contract"]),
            _floats,
            st.dictionaries(st.sampled_from(["a", "b"]), st.floats(-1e6, 1e6, allow_nan=False), max_size=2),
        ),
        max_size=30,
    ),
    start=st.floats(0, 2e9, allow_nan=False),
)
def test_any_window_round_trips_exactly(store: RolloutStore, rows, start):
    key = f"prop-{next(_keys)}"  # the store outlives the examples: one rollout each
    store.save_rollout(key, app="prop", policy={}, state={})
    w = Window(start=start, end=start + 1)
    for arm, segment, status, latency, values in rows:
        w.arm(arm, segment).record(status, latency, values)
        w.arm(arm, segment).record_feedback("score", latency)
    store.append_window(key, "5%", w)
    assert store.windows(key) == [("5%", w)]


def test_request_log_finds_ids_and_ignores_duplicates(store: RolloutStore):
    store.log_requests(KEY, [("a", 1.0, "stable", [("tier", "gold")]), ("b", 2.0, "candidate", [])])
    store.log_requests(KEY, [("a", 9.0, "candidate", []), ("c", 3.0, "stable", [("tier", "free")])])
    store.log_requests(KEY, [])
    assert store.find_request("a") == LoggedRequest(KEY, "a", 1.0, "stable", [("tier", "gold")])
    assert store.find_request("b") == LoggedRequest(KEY, "b", 2.0, "candidate", [])
    assert store.find_request("zzz") is None
    assert store.stats()["rows"]["requests"] == 3


def test_feedback_is_kept_per_rollout_in_time_order(store: RolloutStore):
    store.add_feedback(KEY, "b", "candidate", "human_review_score", 0.8, 2.0)
    store.add_feedback(KEY, "a", "stable", "human_review_score", 0.9, 1.0)
    assert store.feedback(KEY) == [
        {"request_id": "a", "arm": "stable", "metric": "human_review_score", "value": 0.9, "ts": 1.0},
        {"request_id": "b", "arm": "candidate", "metric": "human_review_score", "value": 0.8, "ts": 2.0},
    ]
    assert store.feedback("other") == []


def test_a_request_has_one_feedback_value_per_metric_the_first(store: RolloutStore):
    assert store.add_feedback(KEY, "a", "stable", "human_review_score", 0.9, 1.0) is None  # stored
    assert store.add_feedback(KEY, "a", "stable", "human_review_score", 0.9, 2.0) == 0.9  # a retry
    assert store.add_feedback(KEY, "a", "stable", "human_review_score", 0.2, 3.0) == 0.9  # not stored
    assert store.add_feedback(KEY, "a", "stable", "clicked", 1.0, 4.0) is None  # another metric
    assert [(f["metric"], f["value"], f["ts"]) for f in store.feedback(KEY)] == [
        ("human_review_score", 0.9, 1.0),
        ("clicked", 1.0, 4.0),
    ]


def test_duplicate_feedback_stored_before_version_3_is_removed_keeping_the_first(
    new_location: Callable[[], str | Path], clock: FakeClock
):
    """A version-2 store (before feedback was unique) with a score a client's retry stored twice."""
    location = new_location()
    with RolloutStore(location, clock=clock) as s:
        s.save_rollout(KEY, app="fraud", policy={}, state={})
    if isinstance(location, Path):
        conn: Any = sqlite3.connect(location)
        version_2 = "PRAGMA user_version = 2"
    else:
        import psycopg

        conn = psycopg.connect(location, autocommit=True)
        version_2 = "UPDATE canary_schema SET version = 2"
    with conn:
        conn.execute("DROP INDEX feedback_request_metric")
        for rid, metric, value, ts in [
            ("a", "human_review_score", 0.9, 1.0),
            ("a", "human_review_score", 0.9, 2.0),  # the retry
            ("a", "human_review_score", 0.3, 3.0),
            ("a", "clicked", 1.0, 4.0),
            ("b", "human_review_score", 0.5, 5.0),
        ]:
            conn.execute(
                "INSERT INTO feedback (key, request_id, arm, metric, value, ts) VALUES"
                + (" (?, ?, ?, ?, ?, ?)" if isinstance(location, Path) else " (%s, %s, %s, %s, %s, %s)"),
                (KEY, rid, "stable", metric, value, ts),
            )
        conn.execute(version_2)
    conn.close()
    with RolloutStore(location, clock=clock) as s:
        assert s.stats()["schema_version"] == SCHEMA_VERSION == 3
        assert [(f["request_id"], f["metric"], f["value"]) for f in s.feedback(KEY)] == [
            ("a", "human_review_score", 0.9),
            ("a", "clicked", 1.0),
            ("b", "human_review_score", 0.5),
        ]
        assert s.add_feedback(KEY, "a", "stable", "human_review_score", 0.3, 6.0) == 0.9


def test_store_errors_survive_pickling_as_ray_carries_them(tmp_path: Path):
    import pickle

    for error in (
        StoreError("postgresql://u:***@db/x", "cannot open"),
        SchemaVersionError(tmp_path / "a.db", 9, SCHEMA_VERSION),
        UnknownRolloutError("x.db", KEY),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.__dict__ == error.__dict__


def test_retention_by_age(new_location: Callable[[], str | Path], clock: FakeClock):
    retention = Retention(windows_s=100, request_log_s=50, events_s=200, feedback_s=100)
    with RolloutStore(new_location(), retention, clock) as s:
        s.save_rollout(KEY, app="fraud", policy={}, state={})
        for t in (800.0, 898.0, 950.0):  # cut-offs: windows end < 900, requests < 950, events < 800
            s.append_window(KEY, "1%", real_window(t))
            s.log_requests(KEY, [(f"r{t}", t + 49, "stable", [])])
            s.append_event(KEY, {"ts": t - 150, "kind": "tick"})
            s.add_feedback(KEY, f"r{t}", "stable", "m", 1.0, t)
        assert s.prune() == {"windows": 2, "requests": 2, "feedback": 2, "events": 2}
        assert [w.start for _, w in s.windows(KEY)] == [950.0]
        assert s.find_request("r950.0") is not None and s.find_request("r898.0") is None
        assert [e["ts"] for e in s.events(KEY)] == [800.0]
        assert [f["ts"] for f in s.feedback(KEY)] == [950.0]
        assert s.prune() == {"windows": 0, "requests": 0, "feedback": 0, "events": 0}


def test_retention_by_count_deletes_the_oldest(new_location: Callable[[], str | Path], clock: FakeClock):
    with RolloutStore(new_location(), Retention(max_windows=3, max_requests=4, max_feedback=2), clock) as s:
        for key in ("k1", "k2"):
            s.save_rollout(key, app="a", policy={}, state={})
        for i in (5, 1, 4, 2, 3):  # out of order: "oldest" means by time, not by insertion
            s.append_window("k1", "1%", real_window(900.0 + i))
            s.append_window("k2", "1%", real_window(900.0 + i))
            s.log_requests("k1" if i % 2 else "k2", [(f"r{i}", 900.0 + i, "stable", [])])
            s.add_feedback("k1", f"r{i}", "stable", "m", float(i), 900.0 + i)
        s.append_event("k1", {"ts": 0.0, "kind": "kept"})
        assert s.prune() == {"windows": 4, "requests": 1, "feedback": 3, "events": 0}
        assert [w.start for _, w in s.windows("k1")] == [903.0, 904.0, 905.0]  # max_windows is per rollout
        assert [w.start for _, w in s.windows("k2")] == [903.0, 904.0, 905.0]
        assert s.find_request("r1") is None and s.find_request("r2") is not None
        assert [f["value"] for f in s.feedback("k1")] == [4.0, 5.0]
        assert len(s.events("k1")) == 1  # events_s=None: the audit trail is kept


def test_retention_rejects_nonsense():
    with pytest.raises(ValueError, match="max_windows"):
        Retention(max_windows=0)
    with pytest.raises(ValueError, match="request_log_s"):
        Retention(request_log_s=-1)


def test_newer_schema_is_refused_naming_the_path(tmp_path: Path):
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(SchemaVersionError, match=str(path).replace("\\", "\\\\")) as info:
        RolloutStore(path)
    assert info.value.path == str(path) and info.value.found == 99


def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path):
    path = tmp_path / "notes.db"
    path.write_text("not sqlite at all, but long enough to have a header " * 20)
    with pytest.raises(StoreError, match=r"notes\.db"):
        RolloutStore(path)


def test_closed_store_says_so(new_location: Callable[[], str | Path]):
    s = RolloutStore(new_location())
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.load_rollout(KEY)


def test_reopening_resumes_state_and_stats_report_rows(
    new_location: Callable[[], str | Path], clock: FakeClock
):
    path = new_location()
    with RolloutStore(path, clock=clock) as s:
        s.save_rollout(KEY, app="fraud", policy={"p": 1}, state={"stage": "shadow"})
        s.save_state_and_event(KEY, {"stage": "25%", "candidate_weight": 25}, {"ts": 1.0, "kind": "promote"})
        s.append_window(KEY, "25%", real_window(1.0))
    with RolloutStore(path, clock=clock) as s:
        record = s.load_rollout(KEY)
        assert record is not None and record.state == {"stage": "25%", "candidate_weight": 25}
        stats = s.stats()
        assert stats["path"] == s.location and stats["size_bytes"] > 0
        assert stats["schema_version"] == SCHEMA_VERSION
        assert stats["rows"] == {"rollouts": 1, "events": 1, "windows": 1, "requests": 0, "feedback": 0}
        if isinstance(path, Path):
            assert stats["path"] == str(path) and stats["backend"] == "sqlite"
        else:  # the URL carries the test server's password: never shown
            assert stats["backend"] == "postgresql" and ":***@" in stats["path"]
            assert path.split(":")[2].split("@")[0] not in json.dumps(stats)


# The child writes state + event (and a window) in a loop, resuming from whatever state it finds, and prints
# the step number only after the transaction committed. The parent SIGKILLs it mid-loop, three times.
_CHILD = textwrap.dedent(
    """
    import sys
    from rollout.store import RolloutStore
    from serving.telemetry import Window
    s = RolloutStore(sys.argv[1])
    rec = s.load_rollout("k")
    if rec is None:
        s.save_rollout("k", app="a", policy={}, state={"step": -1})
        rec = s.load_rollout("k")
    step = rec.state["step"] + 1
    while True:
        event = {"ts": float(step), "kind": "step", "step": step, "evidence": {"pad": "y" * 300}}
        s.save_state_and_event("k", {"step": step, "pad": "x" * (step % 500)}, event)
        s.append_window("k", str(step), Window(start=float(step), end=step + 1.0))
        print(step, flush=True)
        step += 1
    """
)


def test_sigkill_mid_write_loses_no_committed_decision(new_location: Callable[[], str | Path]):
    path = new_location()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    acknowledged = -1
    for kill_after in (40, 173, 411):  # steps seen this run before the kill; different points in the loop
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT
        )
        assert child.stdout is not None
        for seen, line in enumerate(child.stdout, start=1):
            acknowledged = int(line)
            if seen == kill_after:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL

        if isinstance(path, Path):
            conn = sqlite3.connect(path)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            conn.close()
        with RolloutStore(path) as s:
            record = s.load_rollout("k")
            assert record is not None
            step = record.state["step"]
            events = s.events("k")
            assert step >= acknowledged  # nothing the child saw committed was lost
            assert [e["step"] for e in events] == list(range(step + 1))  # every state has its event, no gaps
            assert events[-1]["ts"] == float(step)


# --- one schema, one migration path ------------------------------------------------------------------------

# The version-1 schema exactly as canary-serve 0.1 wrote it (SQLite only), to check the migrations from it.
_V1_SQLITE = """
CREATE TABLE rollouts (key TEXT PRIMARY KEY, app TEXT NOT NULL, policy TEXT NOT NULL, state TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE INDEX rollouts_app_updated ON rollouts (app, updated);
CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL REFERENCES rollouts (key),
    ts REAL NOT NULL, kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX events_key_seq ON events (key, seq);
CREATE INDEX events_ts ON events (ts);
CREATE TABLE windows (id INTEGER PRIMARY KEY, key TEXT NOT NULL REFERENCES rollouts (key),
    stage TEXT NOT NULL, start_ts REAL NOT NULL, end_ts REAL NOT NULL, body TEXT NOT NULL);
CREATE INDEX windows_key_start ON windows (key, start_ts);
CREATE INDEX windows_end ON windows (end_ts);
CREATE TABLE requests (request_id TEXT PRIMARY KEY, key TEXT NOT NULL REFERENCES rollouts (key),
    ts REAL NOT NULL, arm TEXT NOT NULL, segments TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX requests_ts ON requests (ts);
CREATE TABLE feedback (id INTEGER PRIMARY KEY, key TEXT NOT NULL REFERENCES rollouts (key),
    request_id TEXT NOT NULL, arm TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL, ts REAL NOT NULL);
CREATE INDEX feedback_key_ts ON feedback (key, ts);
PRAGMA user_version=1;
"""


def test_a_version_1_file_is_migrated_keeping_its_rollouts_and_their_order(tmp_path: Path, clock: FakeClock):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    conn.executescript(_V1_SQLITE)
    for key in ("b-first", "a-second", "c-third"):  # equal times: only insertion order tells them apart
        conn.execute("INSERT INTO rollouts VALUES (?, 'fraud', '{}', '{}', 5.0, 5.0)", (key,))
    conn.execute(
        "INSERT INTO events (key, ts, kind, body) VALUES ('a-second', 1.0, 'start', ?)",
        ('{"ts": 1.0, "kind": "start"}',),
    )
    for ts in (2.0, 3.0):  # a score stored twice by a client's retry
        conn.execute("INSERT INTO feedback VALUES (NULL, 'a-second', 'r1', 'stable', 'm', 0.5, ?)", (ts,))
    conn.commit()
    conn.close()
    with RolloutStore(path, clock=clock) as s:
        assert s.stats()["schema_version"] == SCHEMA_VERSION == 3
        assert [r.key for r in s.rollouts()] == ["c-third", "a-second", "b-first"]
        latest = s.latest_rollout("fraud")
        assert latest is not None and latest.key == "c-third"
        s.save_rollout("d-fourth", app="fraud", policy={}, state={})  # created at 1000 by the fake clock
        assert [r.key for r in s.rollouts()][:2] == ["d-fourth", "c-third"]
        assert [e["kind"] for e in s.events("a-second")] == ["start"]
        assert [f["ts"] for f in s.feedback("a-second")] == [2.0]
        assert s.append_event("a-second", {"ts": 2.0, "kind": "next"}) == 2
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_equal_times_are_ordered_by_insertion_on_both_backends(new_location, clock: FakeClock):
    with RolloutStore(new_location(), clock=clock) as s:
        for key in ("m", "z", "a"):
            s.save_rollout(key, app="fraud", policy={}, state={})
        s.save_rollout("z", app="fraud", policy={"again": True}, state={})  # an update keeps its place
        assert [r.key for r in s.rollouts()] == ["a", "z", "m"]
        latest = s.latest_rollout("fraud")
        assert latest is not None and latest.key == "a"


def test_newer_schema_in_postgresql_is_refused_without_showing_the_password(postgres: PostgresServer):
    import psycopg

    url = postgres.create_database()
    RolloutStore(url).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE canary_schema SET version = 99")
    with pytest.raises(SchemaVersionError) as info:
        RolloutStore(url)
    assert info.value.found == 99 and postgres.password not in str(info.value)
    assert f"127.0.0.1:{postgres.port}" in str(info.value) and ":***@" in info.value.path


def test_controllers_opening_one_postgres_database_at_once_create_one_schema(postgres: PostgresServer):
    url = postgres.create_database()
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: RolloutStore(url), range(6)))
    try:
        stores[0].save_rollout(KEY, app="fraud", policy={}, state={})
        seqs = [s.append_event(KEY, {"ts": 1.0, "kind": f"from-{i}"}) for i, s in enumerate(stores)]
        assert seqs == sorted(seqs) and len(set(seqs)) == 6
        assert len(stores[5].events(KEY)) == 6
        assert {s.stats()["schema_version"] for s in stores} == {SCHEMA_VERSION}
    finally:
        for s in stores:
            s.close()


def test_a_postgres_connection_that_breaks_is_reopened_on_the_next_call(postgres: PostgresServer):
    import psycopg

    url = postgres.create_database()
    with RolloutStore(url) as s:
        s.save_rollout(KEY, app="fraud", policy={}, state={"stage": "shadow"})
        with psycopg.connect(postgres.url(), autocommit=True) as admin:  # what a server restart does
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (url.rsplit("/", 1)[1],),
            )
        with pytest.raises(StoreError) as info:  # the call that finds the connection gone fails ...
            s.load_rollout(KEY)
        assert postgres.password not in str(info.value)
        record = s.load_rollout(KEY)  # ... and the next one runs on a new connection
        assert record is not None and record.state == {"stage": "shadow"}


def test_a_postgres_connection_sends_tcp_keepalives_unless_the_url_sets_them(postgres: PostgresServer):
    """A server or network that goes away silently breaks the connection within seconds, not the kernel's
    ~15 minutes of retransmissions; what the URL says wins."""
    url = postgres.create_database()
    for location, idle in ((url, "10"), (f"{url}?keepalives_idle=30", "30")):
        with RolloutStore(location) as s:
            params = s._conn._conn.info.get_parameters()  # type: ignore[union-attr]
            assert (params["keepalives"], params["keepalives_idle"], params["keepalives_count"]) == (
                "1",
                idle,
                "3",
            )


@pytest.mark.parametrize("how", ["wrong password", "nothing listens"])
def test_an_unreachable_postgres_is_a_store_error_that_hides_the_password(postgres: PostgresServer, how):
    secret = "hunter2-" + postgres.password[:6]
    port = postgres.port if how == "wrong password" else 9  # nothing listens on port 9
    url = f"postgresql://postgres:{secret}@127.0.0.1:{port}/postgres?connect_timeout=5"
    with pytest.raises(StoreError, match="cannot open as a rollout store") as info:
        RolloutStore(url)
    assert secret not in str(info.value) and ":***@127.0.0.1" in str(info.value)


def test_store_urls_open_sqlite_files_and_refuse_other_databases(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with RolloutStore("sqlite:///rel/r.db") as s:  # relative to the working directory here
        assert s.path == Path("rel/r.db") and (tmp_path / "rel" / "r.db").exists()
    with RolloutStore(f"sqlite:///{tmp_path}/abs.db") as s:  # four slashes: an absolute file
        assert s.path == tmp_path / "abs.db" and s.backend == "sqlite"
    with pytest.raises(ValueError, match=r"unsupported store URL 'mysql://root:\*\*\*@db/x'.*postgresql://"):
        RolloutStore("mysql://root:pw@db/x")
