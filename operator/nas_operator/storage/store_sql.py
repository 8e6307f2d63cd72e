"""The SQL state store, for experiments whose state outgrows a ConfigMap.

One row per experiment holds the same gzip document as the ConfigMap store, so both stores
restore identically; a database has no 1 MiB object limit. A version column gives the same
optimistic concurrency as a ConfigMap's resourceVersion: a stale writer gets StoreConflict
instead of overwriting newer trials. Any SQLAlchemy URL works (PostgreSQL is what is tested).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError

from nas_operator.core.state import LoopState
from nas_operator.storage.store import StoreConflict, StoredState, check_owner, decode, encode

# The operator connects wherever a Secret's URL points, on its own network identity: only database servers, never a
# dialect that opens files in the operator's pod (sqlite) or drivers that are not installed.
ALLOWED_DRIVERS = frozenset({"postgresql", "postgresql+psycopg"})
CONNECT_TIMEOUT_SECONDS = 10
STATEMENT_TIMEOUT_MS = 30_000


class UnsafeDatabaseURL(ValueError):
    """A state-store URL the operator refuses to connect to."""


def check_database_url(url: str) -> None:
    """Refuse URLs that are not a PostgreSQL server (the message never echoes the URL: it may hold a password)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UnsafeDatabaseURL("the URL is not a SQLAlchemy database URL") from None
    if parsed.drivername not in ALLOWED_DRIVERS:
        raise UnsafeDatabaseURL(
            f'driver "{parsed.drivername}" is not allowed (allowed: {", ".join(sorted(ALLOWED_DRIVERS))})'
        )
    if not parsed.host:
        raise UnsafeDatabaseURL("the URL names no host (a local socket of the operator's pod is not a state store)")


metadata = MetaData()
state_table = Table(
    "nas_experiment_state",
    metadata,
    Column("namespace", String(253), primary_key=True),
    Column("name", String(253), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("size_bytes", Integer, nullable=False),
    Column("trials", Integer, nullable=False),
    Column("document", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


class SQLStore:
    def __init__(self, url: str, namespace: str, experiment: str, uid: str = "") -> None:
        check_database_url(url)
        self.engine = create_engine(
            url,
            pool_pre_ping=True,
            connect_args={
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            },
        )
        metadata.create_all(self.engine, checkfirst=True)
        self.namespace, self.name, self.uid = namespace, experiment, uid
        self.version: int | None = None
        self.last_size = 0

    def _key(self) -> Any:
        return (state_table.c.namespace == self.namespace) & (state_table.c.name == self.name)

    def load(self) -> StoredState | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(state_table.c.version, state_table.c.document).where(self._key())).first()
        if row is None:
            return None
        stored = decode(bytes(row.document))
        check_owner(stored.state, self.uid, f"the SQL state row {self.namespace}/{self.name}")
        self.version = int(row.version)
        return stored

    def save(self, state: LoopState, engine_snapshot: dict[str, Any]) -> None:
        blob = encode(state, engine_snapshot)
        values = {
            "size_bytes": len(blob),
            "trials": len(state.trials),
            "document": blob,
            "updated_at": datetime.now(UTC),
        }
        with self.engine.begin() as connection:
            if self.version is None:
                try:
                    connection.execute(
                        insert(state_table).values(namespace=self.namespace, name=self.name, version=1, **values)
                    )
                except IntegrityError:
                    raise StoreConflict(
                        f"state of {self.namespace}/{self.name} exists already; load it first"
                    ) from None
                self.version = 1
            else:
                result = connection.execute(
                    update(state_table)
                    .where(self._key() & (state_table.c.version == self.version))
                    .values(version=self.version + 1, **values)
                )
                if result.rowcount != 1:
                    raise StoreConflict(f"state of {self.namespace}/{self.name} changed since version {self.version}")
                self.version += 1
        self.last_size = len(blob)

    def delete(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(state_table).where(self._key()))
        self.version = None
