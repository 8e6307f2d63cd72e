"""Where the dashboard reads experiments: results directories of `nasctl run`, and a cluster as the user.

Both sources only read. A results directory holds the state (`state.json.gz`, replaced atomically
by FileStore, so a read never sees half a write) and the spec (`experiment.yaml`). On a cluster the
NASExperiments and their state ConfigMaps are read with the user's own kubeconfig, so the page shows
exactly what that user's RBAC lets them read, and nothing runs in the cluster on their behalf.

A URL never names a path or an object directly: keys come from the last listing, and only those
are opened. Decoding a state is cached by its version (file mtime and size, or resourceVersion),
so a page that refreshes every few seconds costs a `stat` or a GET, not a decompression.
"""

from __future__ import annotations

import base64
import calendar
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

from nas_operator.core.event_reader import EventReader
from nas_operator.dashboard.model import Loaded
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import SpecError, load_experiment
from nas_operator.storage.store import CONFIGMAP_KEY, StoredState, decode

log = logging.getLogger(__name__)

STATE_FILE = "state.json.gz"
SPEC_FILE = "experiment.yaml"
MAX_READERS = 64  # trials whose TensorBoard readers are kept between requests (each holds bounded curves)


class Source(Protocol):
    prefix: str  # every key of this source starts with it
    errors: list[str]  # what the last listing could not read (a namespace the user may not list)

    def experiment_keys(self) -> list[str]: ...

    def load(self, key: str) -> Loaded | None: ...

    def curves(self, key: str, trial: str) -> dict[str, list[list[float]]] | None: ...


class LocalSource:
    """Results directories: each given directory is one (it holds state.json.gz) or holds several (nas-results/)."""

    prefix = "local~"

    def __init__(self, roots: Iterable[Path]) -> None:
        self.roots = [Path(r) for r in roots]
        self._dirs: dict[str, Path] = {}
        self.errors: list[str] = []
        self._cache: dict[str, tuple[str, Loaded]] = {}
        self._readers: OrderedDict[tuple[str, str], EventReader] = OrderedDict()
        self._lock = threading.Lock()

    def _discover(self) -> dict[str, Path]:
        found: list[Path] = []
        for root in self.roots:
            if (root / STATE_FILE).is_file() or (root / SPEC_FILE).is_file():
                found.append(root)
            elif root.is_dir():
                found += sorted(d for d in root.iterdir() if d.is_dir() and (d / STATE_FILE).is_file())
        keys: dict[str, Path] = {}
        for directory in found:
            key, n = f"local~{directory.resolve().name}", 2
            while key in keys and keys[key] != directory.resolve():
                key, n = f"local~{directory.resolve().name}-{n}", n + 1
            keys[key] = directory.resolve()
        return keys

    def experiment_keys(self) -> list[str]:
        with self._lock:
            self._dirs = self._discover()
            return list(self._dirs)

    def directory(self, key: str) -> Path | None:
        with self._lock:
            if key not in self._dirs:
                self._dirs = self._discover()
            return self._dirs.get(key)

    def load(self, key: str) -> Loaded | None:
        directory = self.directory(key)
        if directory is None:
            return None
        version = "|".join(_file_version(directory / name) for name in (STATE_FILE, SPEC_FILE))
        cached = self._cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        loaded = self._read(key, directory, version)
        self._cache[key] = (version, loaded)
        return loaded

    def _read(self, key: str, directory: Path, version: str) -> Loaded:
        where = str(directory)
        spec: NASExperimentSpec | None = None
        problem = ""
        name = directory.name
        try:
            experiment = load_experiment(yaml.safe_load((directory / SPEC_FILE).read_text()), cluster=False)
            spec, name = experiment.spec, experiment.metadata.name
        except FileNotFoundError:
            problem = f"{SPEC_FILE} is missing (written by nasctl run)"
        except (OSError, yaml.YAMLError, SpecError) as exc:
            problem = f"{SPEC_FILE} cannot be read: {str(exc)[:300]}"
        state = engine = None
        try:
            stored = decode((directory / STATE_FILE).read_bytes())
            state, engine = stored.state, stored.engine
        except FileNotFoundError:
            problem = problem or "no state.json.gz yet"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problem = problem or f"{STATE_FILE} cannot be read: {str(exc)[:300]}"
        created = _mtime(directory / SPEC_FILE)
        return Loaded(key, name, where, spec, state, engine, version, created_at=created, problem=problem, curves=True)

    def curves(self, key: str, trial: str) -> dict[str, list[list[float]]] | None:
        """The trial's scalars from `tensorboard/<trial>/` (the layout backends/local.py writes), read incrementally."""
        directory = self.directory(key)
        if directory is None:
            return None
        log_dir = directory / "tensorboard" / trial
        with self._lock:
            reader = self._readers.pop((key, trial), None) or EventReader(log_dir)
            self._readers[(key, trial)] = reader
            while len(self._readers) > MAX_READERS:
                self._readers.popitem(last=False)
            reader.update()
            return {tag: [[p.step, p.value] for p in curve.points()] for tag, curve in sorted(reader.curves().items())}


def _file_version(path: Path) -> str:
    try:
        info = path.stat()
    except OSError:
        return "-"
    return f"{info.st_mtime_ns}:{info.st_size}"


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


class KubeSource:
    """NASExperiments in the given namespaces and their state ConfigMaps, read with the user's kubeconfig."""

    prefix = "kube~"

    def __init__(self, api_client: Any, namespaces: list[str], request_timeout: float = 15.0) -> None:
        self.api = api_client
        self.namespaces = namespaces
        self.timeout = request_timeout
        self._cache: dict[str, tuple[str, Loaded]] = {}
        self.errors: list[str] = []

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def experiment_keys(self) -> list[str]:
        """Keys of the experiments in every namespace the user may list; a refused namespace becomes an error."""
        from kubernetes.client.exceptions import ApiException

        from nas_operator.resource.spec import API_GROUP, API_VERSION, PLURAL

        keys: list[str] = []
        errors: list[str] = []
        for namespace in self.namespaces:
            try:
                listing = self._custom().list_namespaced_custom_object(
                    API_GROUP, API_VERSION, namespace, PLURAL, _request_timeout=self.timeout
                )
            except ApiException as exc:
                errors.append(f"namespace {namespace}: the API server answered {exc.status} {exc.reason}")
                continue
            keys += [f"{self.prefix}{namespace}~{o['metadata']['name']}" for o in listing.get("items", [])]
        self.errors = errors
        return keys

    def load(self, key: str) -> Loaded | None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from nas_operator.resource.spec import API_GROUP, API_VERSION, PLURAL

        namespace, _, name = key.removeprefix(self.prefix).partition("~")
        if namespace not in self.namespaces or not name:
            return None
        try:
            obj = self._custom().get_namespaced_custom_object(
                API_GROUP, API_VERSION, namespace, PLURAL, name, _request_timeout=self.timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        where = f"namespace {namespace}"
        spec: NASExperimentSpec | None = None
        problem = ""
        try:  # as stored: an experiment created before a newer rule still shows
            spec = load_experiment({k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec")}, cluster=False).spec
        except SpecError as exc:
            problem = f"the spec cannot be read: {str(exc)[:300]}"
        created = _kube_time(obj["metadata"].get("creationTimestamp"))
        status = obj.get("status") or {}

        def loaded(version: str, problem: str = "", stored: StoredState | None = None) -> Loaded:
            state, engine = (stored.state, stored.engine) if stored is not None else (None, None)
            return Loaded(key, name, where, spec, state, engine, version, created, status, problem)

        object_version = obj["metadata"].get("resourceVersion", "")
        if spec is not None and spec.storage.type == "sql":
            problem = "the state is kept in SQL storage, which only the operator reads: the status is shown"
        if problem:
            return loaded(object_version, problem)
        config_map_name = f"{name}-nas-state"
        try:
            config_map = client.CoreV1Api(self.api).read_namespaced_config_map(
                config_map_name, namespace, _request_timeout=self.timeout
            )
        except ApiException as exc:
            reason = {404: "no saved state yet", 403: f"your account may not read ConfigMap {config_map_name}"}
            text = reason.get(exc.status, f"ConfigMap {config_map_name}: {exc.status} {exc.reason}")
            return loaded(object_version, text)
        version = f"{object_version}|{config_map.metadata.resource_version if config_map.metadata else ''}"
        cached = self._cache.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            stored = decode(base64.b64decode((config_map.binary_data or {})[CONFIGMAP_KEY]))
        except (KeyError, ValueError, OSError, TypeError) as exc:
            text = f"ConfigMap {config_map_name} cannot be read: {str(exc)[:300]}"
            return loaded(version, text)
        uid = obj["metadata"].get("uid", "")
        if uid and stored.state.uid and stored.state.uid != uid:
            text = f"ConfigMap {config_map_name} holds an earlier experiment's state (uid {stored.state.uid})"
            return loaded(version, text)
        result = loaded(version, stored=stored)
        self._cache[key] = (version, result)
        return result

    def curves(self, key: str, trial: str) -> dict[str, list[list[float]]] | None:
        """Trials' logs live on a volume inside the cluster: never readable from the user's machine."""
        return None


def _kube_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None
