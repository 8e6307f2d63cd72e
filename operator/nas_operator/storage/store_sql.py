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
from sqlalchemy.exc import IntegrityError

from nas_operator.core.state import LoopState
from nas_operator.storage.store import StoredState, decode, encode

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


class StoreConflict(RuntimeError):
    """Someone else wrote this experiment's state since it was read."""


class SQLStore:
    def __init__(self, url: str, namespace: str, experiment: str) -> None:
        self.engine = create_engine(url, pool_pre_ping=True)
        metadata.create_all(self.engine, checkfirst=True)
        self.namespace, self.name = namespace, experiment
        self.version: int | None = None
        self.last_size = 0

    def _key(self) -> Any:
        return (state_table.c.namespace == self.namespace) & (state_table.c.name == self.name)

    def load(self) -> StoredState | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(state_table.c.version, state_table.c.document).where(self._key())).first()
        if row is None:
            return None
        self.version = int(row.version)
        return decode(bytes(row.document))

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
