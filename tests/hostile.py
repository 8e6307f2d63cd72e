"""The hostile corpus: bad or malicious NASExperiment documents under tests/hostile/, and what refuses them.

Each file is one YAML document, most of them examples/digits-mlp.yaml with one thing made
wrong. Its first line says which field must be named when it is refused, its second what
the document tries:

    # expect: spec.trial.mounts[0]
    # tries: a hostPath mount of the node's root filesystem (type=bind)

`nasctl validate FILE` (cluster rules, default trial policy) refuses every one with a
problem line starting with the expected field path (tests/test_hostile_specs.py). The same
documents can be sent to a real API server and operator: each must be refused by the CRD's
schema or end `InvalidSpec` naming the field. The API below is stable for that use:

    from tests.hostile import corpus
    for case in corpus():
        case.name, case.path, case.expect, case.tries, case.document, case.text
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"


@dataclass(frozen=True)
class HostileCase:
    """One corpus document and the field path its refusal must name."""

    name: str
    """The file's stem, e.g. "01-bind-mount-host-root"."""
    document: Any
    """The parsed YAML: usually a mapping, but some cases are a list or hold a string where a mapping belongs."""
    expect: str
    """Field path prefix a refusal must name, e.g. "spec.trial.mounts[0]" or "metadata.name"."""
    tries: str
    """What the document attempts, in words."""
    path: Path
    """The file."""
    text: str
    """The file's text, as `kubectl apply -f` would send it."""


def _header(text: str, key: str, path: Path) -> str:
    prefix = f"# {key}: "
    for line in text.splitlines()[:2]:
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise ValueError(f"{path}: the first two lines must hold '{prefix}...'")


def load_case(path: Path) -> HostileCase:
    text = path.read_text(encoding="utf-8")
    return HostileCase(
        name=path.stem,
        document=yaml.safe_load(text),
        expect=_header(text, "expect", path),
        tries=_header(text, "tries", path),
        path=path,
        text=text,
    )


def corpus() -> list[HostileCase]:
    """Every case of tests/hostile/, in file-name order."""
    return [load_case(path) for path in sorted(HOSTILE_DIR.glob("*.yaml"))]
