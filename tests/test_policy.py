"""The trial policy: read from the operator's environment or the chart's values, and applied to specs."""

from __future__ import annotations

from typing import Any

import pytest

from nas_operator.resource.policy import TrialPolicy, check_policy
from nas_operator.resource.spec_checks import SpecError, load_experiment


def test_defaults_grant_nothing_beyond_the_default_account() -> None:
    policy = TrialPolicy()
    assert policy.service_accounts == ("default",)
    assert policy.mount_types == ("volume",)
    assert policy.run_as_non_root is True
    assert policy.pending_timeout_seconds == 300.0
    assert TrialPolicy.from_env({}) == policy
    assert TrialPolicy.from_values({}) == policy


def test_from_env_reads_every_variable() -> None:
    policy = TrialPolicy.from_env(
        {
            "NAS_TRIAL_SERVICE_ACCOUNTS": "default, trainer",
            "NAS_TRIAL_MOUNT_TYPES": "volume,bind",
            "NAS_TRIAL_RUN_AS_NON_ROOT": "false",
            "NAS_TRIAL_PENDING_TIMEOUT": "5m",
        }
    )
    assert policy == TrialPolicy(("default", "trainer"), ("volume", "bind"), False, 300.0)
    assert TrialPolicy.from_env({"NAS_TRIAL_PENDING_TIMEOUT": "90"}).pending_timeout_seconds == 90.0
    assert TrialPolicy.from_env({"NAS_TRIAL_MOUNT_TYPES": ""}).mount_types == ()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NAS_TRIAL_RUN_AS_NON_ROOT": "maybe"}, "NAS_TRIAL_RUN_AS_NON_ROOT"),
        ({"NAS_TRIAL_PENDING_TIMEOUT": "soon"}, "NAS_TRIAL_PENDING_TIMEOUT"),
        ({"NAS_TRIAL_MOUNT_TYPES": "volume,nfs"}, "nfs"),
    ],
)
def test_from_env_refuses_a_mistyped_policy(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        TrialPolicy.from_env(env)


def test_from_values_reads_the_chart_block() -> None:
    values = {
        "trialPolicy": {
            "serviceAccounts": ["default", "trainer"],
            "mountTypes": ["volume", "device"],
            "runAsNonRoot": False,
            "pendingTimeout": "2m",
        }
    }
    assert TrialPolicy.from_values(values) == TrialPolicy(("default", "trainer"), ("volume", "device"), False, 120.0)
    with pytest.raises(ValueError, match="unknown keys"):
        TrialPolicy.from_values({"trialPolicy": {"serviceAcounts": ["x"]}})
    with pytest.raises(ValueError, match="runAsNonRoot"):
        TrialPolicy.from_values({"trialPolicy": {"runAsNonRoot": "no"}})


def _problems(document: dict[str, Any], policy: TrialPolicy) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_experiment(document, policy=policy)
    return [str(p) for p in info.value.problems]


def test_the_examples_pass_the_default_policy(digits_doc: dict[str, Any]) -> None:
    experiment = load_experiment(digits_doc, policy=TrialPolicy())
    assert check_policy(experiment.spec, TrialPolicy()) == []


@pytest.mark.parametrize(
    ("trial", "expected"),
    [
        (
            {"serviceAccountName": "admin"},
            'spec.trial.serviceAccountName: "admin" is not allowed by the trial policy '
            "(trialPolicy.serviceAccounts: default)",
        ),
        (
            {"mounts": ["type=bind,src=/,dst=/host"]},
            'spec.trial.mounts[0]: type "bind" is not allowed by the trial policy (trialPolicy.mountTypes: volume)',
        ),
        (
            {"mounts": ["type=device,src=/dev/nvidia0"]},
            'spec.trial.mounts[0]: type "device" is not allowed by the trial policy',
        ),
        (
            {"mounts": ["type=volume,src=nas-logs,dst=/all-logs"]},
            'spec.trial.mounts[0]: mounts the metrics claim "nas-logs"',
        ),
        ({"mounts": ["type=volume,src=data,dst=/nas-logs"]}, 'spec.trial.mounts[0]: dst "/nas-logs" is at or under'),
        ({"mounts": ["type=volume,src=data,dst=/nas-logs/../nas-logs/x"]}, "spec.trial.mounts[0]: dst"),
    ],
)
def test_a_spec_asking_for_more_is_refused_with_the_policy_named(
    digits_doc: dict[str, Any], trial: dict[str, Any], expected: str
) -> None:
    digits_doc["spec"]["trial"].update(trial)
    problems = _problems(digits_doc, TrialPolicy())
    assert any(p.startswith(expected) for p in problems), problems


def test_a_policy_can_grant_more(digits_doc: dict[str, Any]) -> None:
    digits_doc["spec"]["trial"].update(serviceAccountName="trainer", mounts=["type=bind,src=/mnt/cache,dst=/cache"])
    policy = TrialPolicy(service_accounts=("default", "trainer"), mount_types=("volume", "bind"))
    assert load_experiment(digits_doc, policy=policy).spec.trial.service_account_name == "trainer"
    assert load_experiment(digits_doc, cluster=False).spec.trial.mounts  # no policy: not checked


def test_no_policy_grants_the_log_mount(digits_doc: dict[str, Any]) -> None:
    digits_doc["spec"]["trial"]["mounts"] = ["type=bind,src=/srv,dst=/nas-logs/x"]
    generous = TrialPolicy(mount_types=("volume", "bind", "device"))
    assert any("/nas-logs" in p for p in _problems(digits_doc, generous))
