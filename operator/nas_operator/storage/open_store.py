"""The store an experiment's spec names on a cluster: its ConfigMap, or a database whose URL is in an opted-in Secret.

One function for everyone who opens it (the operator's controller, `nasctl status`, `nasctl pareto`), so the rules
that keep a NASExperiment author from pointing the operator at a Secret they may not read are written once.
"""

from __future__ import annotations

import base64
from typing import Any

from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import Problem, SpecError
from nas_operator.storage.store import ConfigMapStore
from nas_operator.storage.store_sql import SQLStore, UnsafeDatabaseURL

# Only a Secret that carries this label may hold a state-store URL: a NASExperiment author who may not read Secrets
# cannot point the operator at one, and only someone who may write Secrets can set the label.
SQL_STORE_LABEL = "nas.operator.dev/state-store"
SQL_STORE_LABEL_VALUE = "true"


def open_store(
    core: Any,
    namespace: str,
    name: str,
    spec: NASExperimentSpec,
    *,
    owner_reference: dict[str, Any] | None = None,
    uid: str = "",
    request_timeout: float = 30.0,
) -> ConfigMapStore | SQLStore:
    """The store `spec.storage` names; SpecError naming spec.storage.secretRef.* when its Secret cannot be used.

    `owner_reference` / `uid` are the experiment object's: a state written by an earlier object of the same name is
    then refused (ForeignState) on load, by whoever reads it.
    """
    if spec.storage.type != "sql":
        return ConfigMapStore(core, namespace, name, owner_reference=owner_reference, request_timeout=request_timeout)
    from kubernetes.client.exceptions import ApiException

    reference = spec.storage.secret_ref
    path = "spec.storage.secretRef"
    if reference is None:  # spec_checks requires it for sql; this guards a spec read without those checks
        raise SpecError([Problem(path, "required with storage.type sql")])
    try:
        secret = core.read_namespaced_secret(reference.name, namespace, _request_timeout=request_timeout)
    except ApiException as exc:
        if exc.status == 404:
            raise SpecError([Problem(f"{path}.name", f"Secret {reference.name} does not exist")]) from None
        raise
    labels = secret.metadata.labels or {}
    if labels.get(SQL_STORE_LABEL) != SQL_STORE_LABEL_VALUE:
        raise SpecError(
            [
                Problem(
                    f"{path}.name",
                    f"Secret {reference.name} is not labelled {SQL_STORE_LABEL}={SQL_STORE_LABEL_VALUE}: the "
                    "operator reads only Secrets their owner opted in as state stores",
                )
            ]
        )
    encoded = (secret.data or {}).get(reference.key)
    if encoded is None:
        raise SpecError([Problem(f"{path}.key", f'Secret {reference.name} has no key "{reference.key}"')])
    try:
        url = base64.b64decode(encoded).decode()
        return SQLStore(url, namespace, name, uid=uid)
    except (UnsafeDatabaseURL, UnicodeDecodeError, ValueError) as exc:
        raise SpecError([Problem(f"{path}.key", f"Secret {reference.name}: {exc}")]) from None
