"""Where an experiment's state lives between steps and across restarts.

One document holds both the trial table and the engine snapshot, so they are always written
together (a ConfigMap update or a file rename is atomic). The document is gzip-compressed
JSON: Ax's snapshot is ~18 KB per trial as plain JSON and under 1 KB gzipped.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas_operator.core.state import LoopState

DOCUMENT_FORMAT = "nas-operator-state/1"
# Kubernetes refuses objects over 1 MiB (etcd's request limit, 1.5 MiB, with headroom). The
# state is refused before that, with room left for metadata and base64 (4/3 of the bytes).
CONFIGMAP_OBJECT_LIMIT = 1024 * 1024
CONFIGMAP_STATE_LIMIT = (CONFIGMAP_OBJECT_LIMIT - 16 * 1024) * 3 // 4
CONFIGMAP_KEY = "state.json.gz"
MANAGED_BY = {"app.kubernetes.io/managed-by": "nas-operator"}


class StateTooLarge(RuntimeError):
    """The state no longer fits where it is stored; the experiment must move to SQL storage."""


class StoreConflict(RuntimeError):
    """Someone else wrote this experiment's state since it was read: re-read it, never overwrite it."""


class ForeignState(RuntimeError):
    """The stored state belongs to another object of the same name (deleted and re-created): never used."""


def check_owner(state: LoopState, uid: str, where: str) -> None:
    """Refuse a state recorded by another experiment object; a state from before uids were recorded is adopted."""
    if uid and state.uid and state.uid != uid:
        raise ForeignState(
            f"{where} holds the state of an earlier experiment of this name (uid {state.uid}, this one is {uid}); "
            "it is left untouched: delete it to start this experiment afresh"
        )


@dataclass
class StoredState:
    state: LoopState
    engine: dict[str, Any]


def encode(state: LoopState, engine_snapshot: dict[str, Any]) -> bytes:
    document = {"format": DOCUMENT_FORMAT, "state": state.to_json(), "engine": engine_snapshot}
    return gzip.compress(json.dumps(document, separators=(",", ":")).encode(), compresslevel=6, mtime=0)


def decode(blob: bytes) -> StoredState:
    document = json.loads(gzip.decompress(blob))
    if document.get("format") != DOCUMENT_FORMAT:
        raise ValueError(f"unknown state document format {document.get('format')!r}")
    return StoredState(LoopState.from_json(document["state"]), document["engine"])


class FileStore:
    """The local store: `state.json.gz` in the results directory, replaced atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json.gz"
        self.last_size = 0

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> StoredState | None:
        if not self.path.exists():
            return None
        return decode(self.path.read_bytes())

    def save(self, state: LoopState, engine_snapshot: dict[str, Any]) -> None:
        blob = encode(state, engine_snapshot)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        self.last_size = len(blob)

    def delete(self) -> None:
        self.path.unlink(missing_ok=True)


class ConfigMapStore:
    """One ConfigMap per experiment, `<experiment>-nas-state`, owned by the experiment (so it goes with it).

    Writes replace the object with the resourceVersion last read, so a second writer (two
    operator replicas by mistake) fails with 409 instead of silently losing trials.
    """

    def __init__(
        self,
        core_api: Any,
        namespace: str,
        experiment: str,
        owner_reference: dict[str, Any] | None = None,
        limit: int = CONFIGMAP_STATE_LIMIT,
        request_timeout: float = 30.0,
    ) -> None:
        self.api = core_api
        self.namespace = namespace
        self.name = f"{experiment}-nas-state"
        self.experiment = experiment
        self.owner_reference = owner_reference
        self.limit = limit
        self.request_timeout = request_timeout
        self.last_size = 0
        self._resource_version: str | None = None

    def _body(self, blob: bytes) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {**MANAGED_BY, "nas.operator.dev/experiment": self.experiment},
        }
        if self.owner_reference is not None:
            metadata["ownerReferences"] = [self.owner_reference]
        if self._resource_version is not None:
            metadata["resourceVersion"] = self._resource_version
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "binaryData": {CONFIGMAP_KEY: base64.b64encode(blob).decode()},
        }

    def load(self) -> StoredState | None:
        from kubernetes.client.exceptions import ApiException

        try:
            config_map = self.api.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=self.request_timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        where = f"ConfigMap {self.namespace}/{self.name}"
        uid = (self.owner_reference or {}).get("uid", "")
        owners = {
            o.uid
            for o in (config_map.metadata.owner_references or [])
            if o.kind == (self.owner_reference or {}).get("kind")
        }
        if uid and owners and uid not in owners:
            raise ForeignState(
                f"{where} is owned by an earlier experiment of this name (uid {', '.join(sorted(owners))}); it is left "
                "untouched and goes with that experiment's garbage collection"
            )
        data = (config_map.binary_data or {}).get(CONFIGMAP_KEY)
        if data is None:
            raise ValueError(f"{where} has no {CONFIGMAP_KEY}")
        stored = decode(base64.b64decode(data))
        check_owner(stored.state, uid, where)
        self._resource_version = config_map.metadata.resource_version
        return stored

    def save(self, state: LoopState, engine_snapshot: dict[str, Any]) -> None:
        from kubernetes.client.exceptions import ApiException

        blob = encode(state, engine_snapshot)
        if len(blob) > self.limit:
            raise StateTooLarge(
                f"the experiment state is {len(blob) / 1024:.0f} KiB compressed, over the {self.limit / 1024:.0f} KiB "
                f"a ConfigMap can hold ({len(state.trials)} trials); use spec.storage.type: sql"
            )
        if self._resource_version is None:
            try:
                created = self.api.create_namespaced_config_map(
                    self.namespace, self._body(blob), _request_timeout=self.request_timeout
                )
            except ApiException as exc:
                if exc.status != 409:
                    raise
                # It exists, though this process never read it: someone wrote it since. Never overwrite blindly.
                raise StoreConflict(f"ConfigMap {self.namespace}/{self.name} was created by someone else") from None
            self._resource_version = created.metadata.resource_version
            self.last_size = len(blob)
            return
        try:
            replaced = self.api.replace_namespaced_config_map(
                self.name, self.namespace, self._body(blob), _request_timeout=self.request_timeout
            )
        except ApiException as exc:
            if exc.status in (404, 409):  # changed or deleted behind our back: re-read before anything else
                raise StoreConflict(
                    f"ConfigMap {self.namespace}/{self.name} changed since it was read ({exc.status} {exc.reason})"
                ) from None
            raise
        self._resource_version = replaced.metadata.resource_version
        self.last_size = len(blob)

    def delete(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_config_map(self.name, self.namespace, _request_timeout=self.request_timeout)
        except ApiException as exc:
            if exc.status != 404:
                raise
        self._resource_version = None
