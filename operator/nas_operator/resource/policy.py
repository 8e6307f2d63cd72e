"""The trial policy: what trials may do, decided by the platform team, not by the experiment's author.

Anyone allowed to create a NASExperiment must not get more power on the cluster through it
than they already have. So the powers a trial pod could ask for (hostPath mounts, devices, a
ServiceAccount's token, root) are off unless the chart's `trialPolicy` values (which become
the operator's NAS_TRIAL_* environment) turn them on. `check_policy` names the field that
asks for more and the policy value that refuses it, so an author knows whom to ask.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nas_operator.resource.spec_checks import Problem, parse_duration, parse_mount

if TYPE_CHECKING:
    from nas_operator.resource.spec import NASExperimentSpec

TRIAL_LOG_MOUNT = "/nas-logs"
"""Where a trial pod sees its own directory of the metrics claim (the backend mounts it there)."""

MOUNT_TYPES = ("volume", "bind", "device")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True)
class TrialPolicy:
    """Powers a trial pod may have; the defaults give none beyond the namespace's `default` account."""

    service_accounts: tuple[str, ...] = ("default",)
    """ServiceAccounts a spec may name in spec.trial.serviceAccountName."""
    mount_types: tuple[str, ...] = ("volume",)
    """TorchX mount types allowed in spec.trial.mounts: bind (hostPath) and device give a pod the node."""
    run_as_non_root: bool = True
    """Trial pods get runAsNonRoot: true (images that need root fail to start, visibly)."""
    pending_timeout_seconds: float = 300.0
    """A trial pod not started by then (image pull, unschedulable, refused by admission) fails the trial."""

    def __post_init__(self) -> None:
        unknown = [t for t in self.mount_types if t not in MOUNT_TYPES]
        if unknown:
            raise ValueError(f"mount types must be among {', '.join(MOUNT_TYPES)} (got {', '.join(unknown)})")
        if not self.pending_timeout_seconds > 0 or self.pending_timeout_seconds == float("inf"):
            raise ValueError("the pending timeout must be a positive, finite duration")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> TrialPolicy:
        """The operator's policy from NAS_TRIAL_SERVICE_ACCOUNTS, NAS_TRIAL_MOUNT_TYPES,
        NAS_TRIAL_RUN_AS_NON_ROOT and NAS_TRIAL_PENDING_TIMEOUT; an unset variable keeps its default.

        ValueError names the variable: an operator with a mistyped policy must not start
        with a laxer one than intended.
        """
        default = cls()
        try:
            accounts = _split(env["NAS_TRIAL_SERVICE_ACCOUNTS"]) if "NAS_TRIAL_SERVICE_ACCOUNTS" in env else None
            mounts = _split(env["NAS_TRIAL_MOUNT_TYPES"]) if "NAS_TRIAL_MOUNT_TYPES" in env else None
            non_root = (
                _boolean("NAS_TRIAL_RUN_AS_NON_ROOT", env["NAS_TRIAL_RUN_AS_NON_ROOT"])
                if "NAS_TRIAL_RUN_AS_NON_ROOT" in env
                else default.run_as_non_root
            )
            timeout = (
                _duration("NAS_TRIAL_PENDING_TIMEOUT", env["NAS_TRIAL_PENDING_TIMEOUT"])
                if "NAS_TRIAL_PENDING_TIMEOUT" in env
                else default.pending_timeout_seconds
            )
            return cls(
                service_accounts=default.service_accounts if accounts is None else accounts,
                mount_types=default.mount_types if mounts is None else mounts,
                run_as_non_root=non_root,
                pending_timeout_seconds=timeout,
            )
        except ValueError as exc:
            raise ValueError(f"trial policy from the environment: {exc}") from None

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> TrialPolicy:
        """The policy from the Helm chart's values document (its `trialPolicy:` block; absent keys keep defaults)."""
        if not isinstance(values, Mapping):
            raise ValueError("the chart values must be a mapping")
        block = values.get("trialPolicy") or {}
        if not isinstance(block, Mapping):
            raise ValueError("trialPolicy must be a mapping")
        unknown = sorted(set(block) - {"serviceAccounts", "mountTypes", "runAsNonRoot", "pendingTimeout"})
        if unknown:
            raise ValueError(f"trialPolicy: unknown keys {', '.join(map(str, unknown))}")
        default = cls()
        non_root = block.get("runAsNonRoot", default.run_as_non_root)
        if not isinstance(non_root, bool):
            raise ValueError("trialPolicy.runAsNonRoot must be true or false")
        timeout = block.get("pendingTimeout")
        return cls(
            service_accounts=_names("trialPolicy.serviceAccounts", block.get("serviceAccounts"))
            or default.service_accounts,
            mount_types=_names("trialPolicy.mountTypes", block.get("mountTypes"), allow_empty=True)
            if "mountTypes" in block
            else default.mount_types,
            run_as_non_root=non_root,
            pending_timeout_seconds=default.pending_timeout_seconds
            if timeout is None
            else _duration("trialPolicy.pendingTimeout", timeout),
        )


def _split(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _boolean(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f'{name}: "{text}" is not true or false')


def _duration(name: str, value: Any) -> float:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f"{name}: must be a duration such as 300 or 5m")
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _names(name: str, value: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of names")
    if not value and not allow_empty:
        raise ValueError(f"{name} must not be empty")
    return tuple(value)


def _listed(values: Iterable[str]) -> str:
    return ", ".join(values) or "none"


def _under(path: str, root: str) -> bool:
    normal = posixpath.normpath("/" + path.lstrip("/")) if path else "/"
    return normal == root or normal.startswith(root.rstrip("/") + "/")


def check_policy(spec: NASExperimentSpec, policy: TrialPolicy, root: str = "spec") -> list[Problem]:
    """Every place where `spec` asks its trials for more than `policy` grants, with the policy value named."""
    problems: list[Problem] = []
    account = spec.trial.service_account_name
    if account is not None and account not in policy.service_accounts:
        problems.append(
            Problem(
                f"{root}.trial.serviceAccountName",
                f'"{account}" is not allowed by the trial policy '
                f"(trialPolicy.serviceAccounts: {_listed(policy.service_accounts)})",
            )
        )
    claim = spec.metrics.claim_name
    for i, text in enumerate(spec.trial.mounts):
        path = f"{root}.trial.mounts[{i}]"
        try:
            mount = parse_mount(text)
        except ValueError:
            continue  # check_spec reports the malformed mount
        if mount.type not in policy.mount_types:
            problems.append(
                Problem(
                    path,
                    f'type "{mount.type}" is not allowed by the trial policy '
                    f"(trialPolicy.mountTypes: {_listed(policy.mount_types)})",
                )
            )
        if mount.type == "volume" and claim is not None and mount.src == claim:
            problems.append(
                Problem(
                    path,
                    f'mounts the metrics claim "{claim}" itself: a trial sees only its own log directory '
                    f"(at {TRIAL_LOG_MOUNT}, mounted by the operator)",
                )
            )
        if mount.dst is not None and _under(mount.dst, TRIAL_LOG_MOUNT):
            problems.append(
                Problem(path, f'dst "{mount.dst}" is at or under {TRIAL_LOG_MOUNT}, the trial\'s own log mount')
            )
    return problems
