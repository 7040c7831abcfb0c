"""The seam between the rollout store and its database: SQLite (one machine) or PostgreSQL (clusters).

`rollout.store` writes its SQL once, with ``?`` placeholders and the syntax both databases share (``ON
CONFLICT``, ``RETURNING``). A dialect holds only what differs: how to connect and set a connection up, the few
type words of the one schema, where the schema version is kept, how a write transaction starts, how
concurrent migrations are serialised, what ``LIMIT`` means "all rows", and how big the store is.

psycopg (3) is imported only when a PostgreSQL store is opened.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Protocol

from rollout.store_url import parse_store_location, redact

BUSY_TIMEOUT_MS = 5000  # a CLI reading the SQLite file may hold a read lock briefly; wait rather than fail
CONNECT_TIMEOUT_S = 10  # PostgreSQL: an unreachable server is an error within this, not a hang
# PostgreSQL: TCP keepalives, so a connection whose server or network went away breaks within ~25 s and the
# store reconnects, rather than a statement waiting for the kernel's retransmissions (~15 min)
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
# pg_advisory_lock key: serialises schema migrations of controllers sharing one database ("canary")
_MIGRATION_LOCK = 0x63616E617279


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """One open connection, in autocommit mode: the store issues BEGIN and COMMIT itself."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    @property
    def in_transaction(self) -> bool: ...

    @property
    def broken(self) -> bool:
        """The server went away (PostgreSQL): the store reconnects on its next call."""
        ...

    def close(self) -> None: ...


class Dialect(Protocol):
    name: ClassVar[str]
    begin: ClassVar[str]  # the statement that starts a write transaction
    no_limit: ClassVar[int | None]  # a LIMIT value meaning "every row"
    types: ClassVar[dict[str, str]]  # the schema's placeholders, see rollout.store._MIGRATIONS

    @property
    def errors(self) -> tuple[type[Exception], ...]:
        """The driver's errors, which the store reports as `rollout.store.StoreError`."""
        ...

    @property
    def location(self) -> str:
        """Where the store is, fit to show: the file, or the URL with its password masked."""
        ...

    @property
    def path(self) -> Path | None:
        """The SQLite file, or None."""
        ...

    def connect(self) -> Connection: ...

    def schema_version(self, conn: Connection) -> int: ...

    def set_schema_version(self, conn: Connection, version: int) -> None: ...

    def schema_lock(self, conn: Connection) -> AbstractContextManager[None]:
        """Held around the migration transaction: no other process migrates the same database meanwhile."""
        ...

    def size_bytes(self, conn: Connection, tables: Sequence[str]) -> int: ...


def dialect_for(location: str | Path) -> Dialect:
    """The dialect of a store location: a path or ``sqlite:///`` URL, or a ``postgresql://`` URL.

    Raises:
        ValueError: an unsupported URL (the message masks any password).
    """
    if isinstance(location, Path):
        return SQLiteDialect(location)
    parsed = parse_store_location(location)
    if parsed.backend == "sqlite":
        return SQLiteDialect(Path(parsed.target))
    return PostgresDialect(parsed.target)


# --- SQLite ---------------------------------------------------------------------------------------------


class _SQLiteConnection:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        return self._conn.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._conn.executemany(sql, rows)

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    @property
    def broken(self) -> bool:
        return False

    def close(self) -> None:
        self._conn.close()


@dataclass(frozen=True)
class SQLiteDialect:
    """A SQLite file in WAL mode with ``synchronous=NORMAL``: durable against a killed process."""

    file: Path
    name: ClassVar[str] = "sqlite"
    begin: ClassVar[str] = "BEGIN IMMEDIATE"  # takes the write lock at once: no upgrade deadlocks
    no_limit: ClassVar[int | None] = -1
    types: ClassVar[dict[str, str]] = {
        "float": "REAL",  # SQLite's REAL is 8 bytes
        "id": "INTEGER PRIMARY KEY",
        "seq": "INTEGER PRIMARY KEY AUTOINCREMENT",  # AUTOINCREMENT: never reused, even after pruning
        "without_rowid": " WITHOUT ROWID",
        "insertion_order": "rowid",
    }
    errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    @property
    def location(self) -> str:
        return str(self.file)

    @property
    def path(self) -> Path | None:
        return self.file

    def connect(self) -> Connection:
        self.file.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so what is one transaction is explicit
        raw = sqlite3.connect(
            self.file, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000
        )
        try:
            self.schema_version(_SQLiteConnection(raw))  # "file is not a database" shows here
            mode = raw.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode stays {mode!r})")
            raw.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable against a killed process
            raw.execute("PRAGMA foreign_keys=ON")
            raw.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except BaseException:
            raw.close()
            raise
        return _SQLiteConnection(raw)

    def schema_version(self, conn: Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def set_schema_version(self, conn: Connection, version: int) -> None:
        conn.execute(f"PRAGMA user_version={int(version)}")

    def schema_lock(self, conn: Connection) -> AbstractContextManager[None]:
        return nullcontext()  # the migration's BEGIN IMMEDIATE holds the database's write lock

    def size_bytes(self, conn: Connection, tables: Sequence[str]) -> int:
        files = (self.file, self.file.with_name(self.file.name + "-wal"))
        return sum(p.stat().st_size for p in files if p.exists())


# --- PostgreSQL -----------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _pg_sql(sql: str) -> str:
    return sql.replace("?", "%s")  # the store's SQL has no literal "?" and no "%"


class _PostgresConnection:
    def __init__(self, conn: Any) -> None:  # a psycopg.Connection, typed loosely: psycopg loads lazily
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        cursor: Cursor = self._conn.execute(_pg_sql(sql), params)
        return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(_pg_sql(sql), rows)

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(self._conn.info.transaction_status != TransactionStatus.IDLE)

    @property
    def broken(self) -> bool:
        return bool(self._conn.broken or self._conn.closed)

    def close(self) -> None:
        self._conn.close()


class PostgresDialect:
    """A PostgreSQL database named by a URL; every controller of a cluster may share it.

    Transactions run at READ COMMITTED; the store's writes are single statements or a state update with its
    event, so they need no stronger isolation. Foreign keys are always on.
    """

    name: ClassVar[str] = "postgresql"
    begin: ClassVar[str] = "BEGIN"
    no_limit: ClassVar[int | None] = None  # LIMIT NULL: every row
    types: ClassVar[dict[str, str]] = {
        "float": "DOUBLE PRECISION",  # PostgreSQL's REAL is 4 bytes: too coarse for epoch seconds
        "id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "seq": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",  # identities are never reused
        "without_rowid": "",
        # a PostgreSQL store is created at the latest version in one transaction: no rows to number yet
        "insertion_order": "0",
    }

    def __init__(self, url: str) -> None:
        self.url = url
        import psycopg

        self.errors: tuple[type[Exception], ...] = (psycopg.Error,)

    def __repr__(self) -> str:
        return f"PostgresDialect({self.location!r})"

    @property
    def location(self) -> str:
        return redact(self.url)

    @property
    def path(self) -> Path | None:
        return None

    def connect(self) -> Connection:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict

        options: dict[str, Any] = {"autocommit": True}
        given = conninfo_to_dict(self.url)
        if "connect_timeout" not in given:
            options["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in given:
            options["application_name"] = "canary-serve"
        options.update({name: value for name, value in KEEPALIVES.items() if name not in given})
        return _PostgresConnection(psycopg.connect(self.url, **options))

    def schema_version(self, conn: Connection) -> int:
        if conn.execute("SELECT to_regclass('canary_schema')").fetchone()[0] is None:
            return 0
        row = conn.execute("SELECT version FROM canary_schema").fetchone()
        return int(row[0]) if row else 0

    def set_schema_version(self, conn: Connection, version: int) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS canary_schema (version INTEGER NOT NULL)")
        conn.execute("DELETE FROM canary_schema")
        conn.execute("INSERT INTO canary_schema (version) VALUES (?)", (int(version),))

    @contextmanager
    def schema_lock(self, conn: Connection) -> Iterator[None]:
        # A session lock taken *before* the migration's BEGIN: a transaction that began before another
        # process committed its migration would still see the catalog without the new tables.
        conn.execute("SELECT pg_advisory_lock(?)", (_MIGRATION_LOCK,))
        try:
            yield
        finally:
            if not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(?)", (_MIGRATION_LOCK,))

    def size_bytes(self, conn: Connection, tables: Sequence[str]) -> int:
        total = 0
        for table in tables:
            total += int(conn.execute("SELECT pg_total_relation_size(?::regclass)", (table,)).fetchone()[0])
        return total
