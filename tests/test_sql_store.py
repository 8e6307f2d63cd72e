"""The SQL state store against a real PostgreSQL started on 127.0.0.1."""

from __future__ import annotations

import os

import pytest

from nas_operator.core.state import LoopState, TrialRecord
from nas_operator.storage.store import CONFIGMAP_STATE_LIMIT, ForeignState, StoreConflict
from nas_operator.storage.store_sql import SQLStore, UnsafeDatabaseURL, check_database_url

from .postgres import postgres_url  # noqa: F401  (fixture)


def _state(trials: int) -> LoopState:
    state = LoopState("exp", "fingerprint")
    for i in range(trials):
        state.trials[i] = TrialRecord(i, f"exp-t{i}", {"x": i}, "Sobol", status="succeeded", metrics={"f": 0.5})
    return state


def test_round_trip_conflicts_and_delete(postgres_url: str) -> None:  # noqa: F811
    store = SQLStore(postgres_url, "team-a", "exp")
    assert store.load() is None
    store.save(_state(2), {"engine": 1})
    store.save(_state(3), {"engine": 2})
    reader = SQLStore(postgres_url, "team-a", "exp")
    loaded = reader.load()
    assert loaded is not None and sorted(loaded.state.trials) == [0, 1, 2] and loaded.engine == {"engine": 2}
    assert SQLStore(postgres_url, "team-b", "exp").load() is None  # namespaced
    store.save(_state(4), {})
    with pytest.raises(StoreConflict, match="changed since version 2"):
        reader.save(_state(4), {})
    with pytest.raises(StoreConflict, match="exists already"):
        SQLStore(postgres_url, "team-a", "exp").save(_state(1), {})
    store.delete()
    assert SQLStore(postgres_url, "team-a", "exp").load() is None


def test_holds_states_a_configmap_cannot(postgres_url: str) -> None:  # noqa: F811
    store = SQLStore(postgres_url, "team-a", "large")
    big = {"noise": os.urandom(2 * CONFIGMAP_STATE_LIMIT).hex()}
    store.save(_state(1), big)
    assert store.last_size > CONFIGMAP_STATE_LIMIT
    loaded = SQLStore(postgres_url, "team-a", "large").load()
    assert loaded is not None and loaded.engine == big


def test_a_row_of_another_experiment_object_is_refused(postgres_url: str) -> None:  # noqa: F811
    state = _state(1)
    state.uid = "old-uid"
    SQLStore(postgres_url, "team-a", "reused", uid="old-uid").save(state, {})
    with pytest.raises(ForeignState, match="uid old-uid, this one is new-uid"):
        SQLStore(postgres_url, "team-a", "reused", uid="new-uid").load()


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("sqlite:////etc/nas.db", 'driver "sqlite" is not allowed'),
        ("mysql://root@db/nas", 'driver "mysql" is not allowed'),
        ("postgresql+psycopg:///postgres", "names no host"),
        ("not a url", "not a SQLAlchemy database URL"),
    ],
)
def test_only_postgresql_servers_are_accepted_as_state_stores(url: str, rule: str) -> None:
    with pytest.raises(UnsafeDatabaseURL, match=rule) as refused:
        check_database_url(url)
    assert "/etc/nas.db" not in str(refused.value)  # the URL (it may hold a password) is never echoed


def test_a_state_in_the_first_format_is_still_read() -> None:
    from nas_operator.storage.store import decode, encode

    document = _state(2).to_json()
    document["format"] = 1
    del document["uid"]
    blob = encode(_state(0), {})
    import gzip
    import json

    wrapped = json.loads(gzip.decompress(blob))
    wrapped["state"] = document
    stored = decode(gzip.compress(json.dumps(wrapped).encode()))
    assert stored.state.uid == "" and sorted(stored.state.trials) == [0, 1]
