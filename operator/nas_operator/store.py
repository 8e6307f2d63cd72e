"""Where an experiment's state lives between steps and across restarts.

One document holds both the trial table and the engine snapshot, so they are always written
together (a ConfigMap update or a file rename is atomic). The document is gzip-compressed
JSON: Ax's snapshot is ~18 KB per trial as plain JSON and under 1 KB gzipped.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nas_operator.state import LoopState

DOCUMENT_FORMAT = "nas-operator-state/1"


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
