"""The rollout controller's durable store: SQLite in WAL mode at a configurable path (one machine), or a
PostgreSQL database named by a URL (clusters). No Ray.

It keeps what a restarted controller needs to resume and what the post-rollout report is written from:

- ``rollouts``: one row per rollout key (policy and state as JSON, created/updated times);
- ``events``: every transition and decision with its evidence, append-only, numbered by ``seq``;
- ``windows``: per-window telemetry aggregates (a `Window`, per arm × segment) tagged with the stage;
- ``requests``: request id → rollout, arm and segments, so POST /feedback joins to the arm that served it;
- ``feedback``: the values POST /feedback brought, one per request and metric.

Backends: one schema and one migration path for both (`_MIGRATIONS`); what differs between SQLite and
PostgreSQL (connection, type words, where the schema version lives, how a write transaction starts) is
behind `rollout.store_dialect`. A location is a path or ``sqlite:///...`` (SQLite) or ``postgresql://...``
(see `rollout.store_url`); a password in a URL is masked wherever the location is shown.

Durability: SQLite's WAL with ``synchronous=NORMAL`` loses nothing committed when the *process* dies (SIGKILL,
OOM kill); only an OS crash or power loss can drop the last transactions. PostgreSQL keeps what it committed
by its own settings. `RolloutStore.save_state_and_event`
writes a state and the event that caused it in one transaction, so after a crash both or neither are there.

Retention: `RolloutStore.prune` deletes windows, request-log rows and feedback by age and count (see
`Retention`); the controller calls it periodically. Freed pages are reused by later inserts, so the file
stays at its high-water mark rather than growing without bound. Events are kept forever by default: they
are the audit trail.

Cost (measured on this project's 2-core dev VM): `append_window` of a 14 KB window (3 arms × ~25 segments)
~1 ms, `log_requests` of 100 rows ~1.5 ms, `save_state_and_event` ~0.2 ms; so 1 window/s and 100 requests/s
cost ~0.3 % of a core. Reading back costs ~1 ms per window (JSON and `Window.from_dict`): a restarted
controller should read since its stage started, not the whole history. One connection guarded by a lock
serialises calls from an actor's thread pool; other processes (the CLI) may read concurrently (WAL). A
PostgreSQL connection that breaks (a server restart) is opened again on the next call.

Example:
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d, RolloutStore(pathlib.Path(d) / "s.db", clock=lambda: 5) as s:
    ...     s.save_rollout("app/r1", app="app", policy={"owner": "me"}, state={"stage": "shadow"})
    ...     s.save_state_and_event("app/r1", {"stage": "1%"}, {"ts": 6.0, "kind": "promote"})
    ...     s.load_rollout("app/r1").state, [e["kind"] for e in s.events("app/r1")]
    1
    ({'stage': '1%'}, ['promote'])
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rollout.store_dialect import Connection, Dialect, dialect_for
from rollout.store_url import scrub
from serving.telemetry import Window

# The one schema of both backends, as migrations: entry i takes a store from version i to i + 1. A new store
# runs them all, an older one the rest, in one transaction. Words in braces are the dialect's
# (`rollout.store_dialect`): {float} is an 8-byte float, {id} and {seq} integer keys ({seq} never reused).
_V1 = """
CREATE TABLE rollouts (
    key TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    policy TEXT NOT NULL,
    state TEXT NOT NULL,
    created {float} NOT NULL,
    updated {float} NOT NULL
);
CREATE INDEX rollouts_app_updated ON rollouts (app, updated);
CREATE TABLE events (
    seq {seq},
    key TEXT NOT NULL REFERENCES rollouts (key),
    ts {float} NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX events_key_seq ON events (key, seq);
CREATE INDEX events_ts ON events (ts);
CREATE TABLE windows (
    id {id},
    key TEXT NOT NULL REFERENCES rollouts (key),
    stage TEXT NOT NULL,
    start_ts {float} NOT NULL,
    end_ts {float} NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX windows_key_start ON windows (key, start_ts);
CREATE INDEX windows_end ON windows (end_ts);
CREATE TABLE requests (
    request_id TEXT PRIMARY KEY,
    key TEXT NOT NULL REFERENCES rollouts (key),
    ts {float} NOT NULL,
    arm TEXT NOT NULL,
    segments TEXT NOT NULL
){without_rowid};
CREATE INDEX requests_ts ON requests (ts);
CREATE TABLE feedback (
    id {id},
    key TEXT NOT NULL REFERENCES rollouts (key),
    request_id TEXT NOT NULL,
    arm TEXT NOT NULL,
    metric TEXT NOT NULL,
    value {float} NOT NULL,
    ts {float} NOT NULL
);
CREATE INDEX feedback_key_ts ON feedback (key, ts);
"""
# v2: insertion order as a column. v1 broke ties between rollouts saved at the same clock reading by SQLite's
# implicit rowid, which PostgreSQL has no counterpart of; {insertion_order} carries it over from a v1 file.
_V2 = """
ALTER TABLE rollouts ADD COLUMN ord BIGINT NOT NULL DEFAULT 0;
UPDATE rollouts SET ord = {insertion_order};
"""
# v3: one feedback value per request and metric. A client that retried a POST /feedback whose answer it
# never got could store a score twice; the first of each pair is kept.
_V3 = """
DELETE FROM feedback WHERE id NOT IN (SELECT MIN(id) FROM feedback GROUP BY request_id, metric);
CREATE UNIQUE INDEX feedback_request_metric ON feedback (request_id, metric);
"""
_MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3)
SCHEMA_VERSION = len(_MIGRATIONS)
_TABLES = ("rollouts", "events", "windows", "requests", "feedback")


class StoreError(Exception):
    """Root of the store's errors; carries where the store is (a file, or a URL with its password masked)."""

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        super().__init__(f"rollout store {os.fspath(path)}: {message}")
        self.path = os.fspath(path)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as built (its arguments are not its ``args``), so Ray can carry it from the controller.
        return _rebuilt, (type(self), self.args, self.__dict__)


def _rebuilt(cls: type[StoreError], args: tuple[Any, ...], state: dict[str, Any]) -> StoreError:
    error = Exception.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class SchemaVersionError(StoreError):
    """The store was written by a newer canary-serve whose schema this one does not understand."""

    def __init__(self, path: str | os.PathLike[str], found: int, supported: int) -> None:
        super().__init__(
            path,
            f"schema version {found} is newer than this canary-serve supports ({supported}); upgrade "
            "canary-serve or point the store at another path or database",
        )
        self.found, self.supported = found, supported


class UnknownRolloutError(StoreError):
    """A write named a rollout key that `RolloutStore.save_rollout` never saved."""

    def __init__(self, path: str | os.PathLike[str], key: str) -> None:
        super().__init__(path, f"no rollout {key!r}; call save_rollout({key!r}, ...) first")
        self.key = key


@dataclass(frozen=True)
class Retention:
    """How much history the store keeps; `RolloutStore.prune` applies it.

    Attributes:
        windows_s: per-window aggregates whose end is older than this are deleted.
        max_windows: at most this many windows per rollout (oldest deleted first).
        request_log_s: request-id log rows older than this are deleted.
        max_requests: at most this many request-log rows in all (oldest deleted first).
        events_s: events older than this are deleted; None keeps them forever (the audit trail).
        feedback_s: feedback rows older than this are deleted; None keeps them forever.
        max_feedback: at most this many feedback rows per rollout (oldest deleted first).
    """

    windows_s: float = 7 * 86400
    max_windows: int = 100_000
    request_log_s: float = 86400.0
    max_requests: int = 1_000_000
    events_s: float | None = None
    feedback_s: float | None = 7 * 86400
    max_feedback: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("windows_s", "request_log_s", "events_s", "feedback_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"Retention.{name} must be a positive number of seconds, got {value!r}")
        for name in ("max_windows", "max_requests", "max_feedback"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"Retention.{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class RolloutRecord:
    """One rollout as stored: its policy and latest state (both plain JSON data)."""

    key: str
    app: str
    policy: dict[str, Any]
    state: dict[str, Any]
    created: float
    updated: float


@dataclass(frozen=True)
class LoggedRequest:
    """One request-log row: which rollout and arm served a request, in which segments."""

    key: str
    request_id: str
    ts: float
    arm: str
    segments: list[tuple[str, str]]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class RolloutStore:
    """The store of one controller. See the module docstring for what it keeps and guarantees.

    Args:
        location: a SQLite file (a path, or ``sqlite:///relative.db`` / ``sqlite:////absolute.db``; parent
            directories are created) or a PostgreSQL database (``postgresql://user@host:5432/db``).
        retention: what `prune` keeps.
        clock: seconds since the epoch; the only source of time (created/updated stamps, pruning).

    Attributes:
        path: the SQLite file, or None for PostgreSQL.
        location: where the store is, fit to show (a URL's password masked).
        backend: ``"sqlite"`` or ``"postgresql"``.

    Raises:
        SchemaVersionError: the store has a newer schema than this code.
        StoreError: the store cannot be opened or reached, or is not a rollout store.
        ValueError: ``location`` is a URL of another database.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        retention: Retention = Retention(),  # frozen, so one shared default is safe
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._url = os.fspath(location)
        self._dialect: Dialect = dialect_for(location if isinstance(location, Path) else self._url)
        self.path: Path | None = self._dialect.path
        self.location = self._dialect.location
        self.backend = self._dialect.name
        self.retention = retention
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: Connection | None = self._connect()
        try:
            self._migrate(self._conn)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _error(self, exc: BaseException, doing: str = "") -> StoreError:
        return StoreError(self.location, scrub(f"{doing}{exc}", self._url))

    def _connect(self) -> Connection:
        errors: tuple[type[BaseException], ...] = (OSError, *self._dialect.errors)
        try:
            return self._dialect.connect()
        except errors as exc:
            raise self._error(exc, "cannot open as a rollout store: ") from None

    def _migrate(self, conn: Connection) -> None:
        """Brings the schema to `SCHEMA_VERSION` (one path for both backends) under the write lock."""
        dialect = self._dialect
        try:
            if dialect.schema_version(conn) == SCHEMA_VERSION:
                return
            with dialect.schema_lock(conn):
                conn.execute(dialect.begin)
                try:
                    # re-read under the lock: another process may have migrated meanwhile
                    version = dialect.schema_version(conn)
                    if version > SCHEMA_VERSION:
                        raise SchemaVersionError(self.location, version, SCHEMA_VERSION)
                    for script in _MIGRATIONS[version:]:
                        for statement in script.format(**dialect.types).split(";"):
                            if statement.strip():
                                conn.execute(statement)
                    if version != SCHEMA_VERSION:
                        dialect.set_schema_version(conn, SCHEMA_VERSION)
                    conn.execute("COMMIT")
                except BaseException:
                    if not conn.broken and conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
        except dialect.errors as exc:
            raise self._error(exc, "cannot open as a rollout store: ") from None

    def __enter__(self) -> RolloutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection (idempotent); later calls raise `StoreError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._lock:
            if self._conn is None:
                raise StoreError(self.location, "the store is closed")
            if self._conn.broken:  # the server restarted or the network dropped: try a new connection
                self._conn.close()
                self._conn = self._connect()
            try:
                yield self._conn
            except self._dialect.errors as exc:
                raise self._error(exc) from exc

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One transaction: everything inside commits together or not at all."""
        with self._read() as conn:
            conn.execute(self._dialect.begin)
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # the database may have rolled back already (SQLite: disk full, I/O error; a lost connection)
                if not conn.broken and conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _require(self, conn: Connection, key: str) -> None:
        if conn.execute("SELECT 1 FROM rollouts WHERE key = ?", (key,)).fetchone() is None:
            raise UnknownRolloutError(self.location, key)

    # -- rollouts ----------------------------------------------------------------------------------------

    def save_rollout(self, key: str, *, app: str, policy: dict[str, Any], state: dict[str, Any]) -> None:
        """Inserts the rollout (created = now) or updates its app, policy, state and updated time."""
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO rollouts (key, app, policy, state, created, updated, ord)"
                " VALUES (?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(ord), 0) + 1 FROM rollouts))"
                " ON CONFLICT (key) DO UPDATE SET app = excluded.app, policy = excluded.policy,"
                " state = excluded.state, updated = excluded.updated",
                (key, app, _dumps(policy), _dumps(state), now, now),
            )

    def load_rollout(self, key: str) -> RolloutRecord | None:
        """The rollout saved under ``key``, or None."""
        with self._read() as conn:
            row = conn.execute(f"{_ROLLOUT_SELECT} WHERE key = ?", (key,)).fetchone()
        return _record(row) if row else None

    def latest_rollout(self, app: str) -> RolloutRecord | None:
        """The most recently updated rollout of ``app``, or None."""
        with self._read() as conn:
            row = conn.execute(
                f"{_ROLLOUT_SELECT} WHERE app = ? ORDER BY updated DESC, ord DESC LIMIT 1", (app,)
            ).fetchone()
        return _record(row) if row else None

    def rollouts(self, app: str | None = None, limit: int | None = None) -> list[RolloutRecord]:
        """Every rollout (of ``app`` when given), most recently created first; the first ``limit`` of them."""
        where, args = ("WHERE app = ?", (app,)) if app is not None else ("", ())
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        with self._read() as conn:
            rows = conn.execute(
                f"{_ROLLOUT_SELECT} {where} ORDER BY created DESC, ord DESC{tail}", args
            ).fetchall()
        return [_record(row) for row in rows]

    # -- events ------------------------------------------------------------------------------------------

    def append_event(self, key: str, event: dict[str, Any]) -> int:
        """Appends a transition or decision; returns its ``seq`` (increasing, never reused).

        Args:
            key: the rollout.
            event: JSON-safe data with at least ``ts`` (float) and ``kind`` (str); typically also "from",
                "to", "weight", "shadow_percent", "actor", "reason", "evidence".
        """
        ts, kind = _event_head(event)
        with self._write() as conn:
            self._require(conn, key)
            return self._insert_event(conn, key, ts, kind, event)

    def save_state_and_event(self, key: str, state: dict[str, Any], event: dict[str, Any]) -> int:
        """Updates the rollout's state and appends the event that caused it in ONE transaction.

        Returns:
            The event's ``seq``.

        Raises:
            UnknownRolloutError: ``key`` was never saved.
        """
        ts, kind = _event_head(event)
        now = self._clock()
        with self._write() as conn:
            updated = conn.execute(
                "UPDATE rollouts SET state = ?, updated = ? WHERE key = ?", (_dumps(state), now, key)
            )
            if updated.rowcount != 1:
                raise UnknownRolloutError(self.location, key)
            return self._insert_event(conn, key, ts, kind, event)

    @staticmethod
    def _insert_event(conn: Connection, key: str, ts: float, kind: str, event: dict[str, Any]) -> int:
        body = _dumps({k: v for k, v in event.items() if k != "seq"})
        rows = conn.execute(  # fetchall: SQLite finishes the statement only when its rows are read
            "INSERT INTO events (key, ts, kind, body) VALUES (?, ?, ?, ?) RETURNING seq",
            (key, ts, kind, body),
        ).fetchall()
        return int(rows[0][0])

    def events(self, key: str, since_seq: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The rollout's events with ``seq > since_seq`` in order, each with its ``seq``."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT seq, body FROM events WHERE key = ? AND seq > ? ORDER BY seq LIMIT ?",
                (key, since_seq, self._dialect.no_limit if limit is None else limit),
            ).fetchall()
        return [{"seq": seq, **json.loads(body)} for seq, body in rows]

    # -- windows -----------------------------------------------------------------------------------------

    def append_window(self, key: str, stage: str, window: Window) -> None:
        """Stores one telemetry window (every arm × segment) observed during ``stage``."""
        with self._write() as conn:
            self._require(conn, key)
            conn.execute(
                "INSERT INTO windows (key, stage, start_ts, end_ts, body) VALUES (?, ?, ?, ?, ?)",
                (key, stage, window.start, window.end, _dumps(window.to_dict())),
            )

    def windows(self, key: str, since: float | None = None) -> list[tuple[str, Window]]:
        """(stage, window) pairs of the rollout in order of start, those starting at or after ``since``."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT stage, body FROM windows WHERE key = ? AND start_ts >= ? ORDER BY start_ts, id",
                (key, -float("inf") if since is None else since),
            ).fetchall()
        return [(stage, Window.from_dict(json.loads(body))) for stage, body in rows]

    def merged_window(self, key: str, since: float | None = None) -> Window:
        """The exact merge of `windows` (an empty `Window` when there are none)."""
        merged = Window()
        for _, window in self.windows(key, since):
            merged.merge(window)
        return merged

    # -- request log and feedback ------------------------------------------------------------------------

    def log_requests(self, key: str, rows: Sequence[tuple[str, float, str, list[tuple[str, str]]]]) -> None:
        """Logs (request_id, ts, arm, segments) rows in one transaction; an id already logged is ignored."""
        if not rows:
            return
        with self._write() as conn:
            self._require(conn, key)
            conn.executemany(
                "INSERT INTO requests (request_id, key, ts, arm, segments) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (request_id) DO NOTHING",
                [(rid, key, ts, arm, _dumps([list(s) for s in segs])) for rid, ts, arm, segs in rows],
            )

    def find_request(self, request_id: str) -> LoggedRequest | None:
        """The logged request with this id, or None (never logged, or pruned)."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT key, request_id, ts, arm, segments FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None:
            return None
        segments = [(str(label), str(value)) for label, value in json.loads(row[4])]
        return LoggedRequest(row[0], row[1], row[2], row[3], segments)

    def add_feedback(
        self, key: str, request_id: str, arm: str, metric: str, value: float, ts: float
    ) -> float | None:
        """Stores one feedback value (a review score, a KPI) joined to the arm that served the request.

        A request has one value per metric: the first stored. Returns None when this one was stored, else
        the value stored before (a client's retry brings the same one; a different one is not stored).
        """
        with self._write() as conn:
            self._require(conn, key)
            row = conn.execute(
                "SELECT value FROM feedback WHERE request_id = ? AND metric = ?", (request_id, metric)
            ).fetchone()
            if row is not None:
                return float(row[0])
            conn.execute(
                "INSERT INTO feedback (key, request_id, arm, metric, value, ts) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (request_id, metric) DO NOTHING",
                (key, request_id, arm, metric, float(value), ts),
            )
        return None

    def feedback(self, key: str) -> list[dict[str, Any]]:
        """The rollout's feedback in time order: dicts with request_id, arm, metric, value, ts."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT request_id, arm, metric, value, ts FROM feedback WHERE key = ? ORDER BY ts, id",
                (key,),
            ).fetchall()
        return [dict(zip(("request_id", "arm", "metric", "value", "ts"), row, strict=True)) for row in rows]

    # -- housekeeping ------------------------------------------------------------------------------------

    def prune(self) -> dict[str, int]:
        """Applies the `Retention` at ``clock()``, in one transaction; returns rows deleted per table."""
        r, now, all_rows = self.retention, self._clock(), self._dialect.no_limit
        deleted = dict.fromkeys(("windows", "requests", "feedback", "events"), 0)
        with self._write() as conn:

            def run(table: str, sql: str, *args: Any) -> None:
                deleted[table] += conn.execute(sql, args).rowcount

            run("windows", "DELETE FROM windows WHERE end_ts < ?", now - r.windows_s)
            for (key,) in conn.execute("SELECT key FROM rollouts").fetchall():
                run(
                    "windows",
                    "DELETE FROM windows WHERE id IN (SELECT id FROM windows WHERE key = ?"
                    " ORDER BY start_ts DESC, id DESC LIMIT ? OFFSET ?)",
                    key,
                    all_rows,
                    r.max_windows,
                )
                run(
                    "feedback",
                    "DELETE FROM feedback WHERE id IN (SELECT id FROM feedback WHERE key = ?"
                    " ORDER BY ts DESC, id DESC LIMIT ? OFFSET ?)",
                    key,
                    all_rows,
                    r.max_feedback,
                )
            run("requests", "DELETE FROM requests WHERE ts < ?", now - r.request_log_s)
            run(
                "requests",
                "DELETE FROM requests WHERE request_id IN (SELECT request_id FROM requests"
                " ORDER BY ts DESC LIMIT ? OFFSET ?)",
                all_rows,
                r.max_requests,
            )
            if r.feedback_s is not None:
                run("feedback", "DELETE FROM feedback WHERE ts < ?", now - r.feedback_s)
            if r.events_s is not None:
                run("events", "DELETE FROM events WHERE ts < ?", now - r.events_s)
        return deleted

    def stats(self) -> dict[str, Any]:
        """Location (a URL's password masked), backend, size in bytes (SQLite: database + WAL; PostgreSQL:
        the tables with their indexes), schema version and rows per table."""
        with self._read() as conn:
            rows = {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in _TABLES}
            size = self._dialect.size_bytes(conn, _TABLES)
        return {
            "path": self.location,
            "backend": self.backend,
            "size_bytes": size,
            "schema_version": SCHEMA_VERSION,
            "rows": rows,
        }


_ROLLOUT_SELECT = "SELECT key, app, policy, state, created, updated FROM rollouts"


def _record(row: tuple[Any, ...]) -> RolloutRecord:
    key, app, policy, state, created, updated = row
    return RolloutRecord(key, app, json.loads(policy), json.loads(state), created, updated)


def _event_head(event: dict[str, Any]) -> tuple[float, str]:
    ts, kind = event.get("ts"), event.get("kind")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not isinstance(kind, str) or not kind:
        raise ValueError(
            "an event needs 'ts' (seconds, a number) and 'kind' (a non-empty string), "
            f"got ts={ts!r} kind={kind!r}"
        )
    return float(ts), kind
