"""What the operator would create for one trial, without a cluster (`nasctl render`).

A cautious platform team reads this before it allows a spec, and the tests compare it with what
the operator really creates: so it is the operator's own code path (the spec checked under the
trial policy, the trial's command rendered as the loop renders it, the Job built by the
Kubernetes backend), not a description of it. Only the parameters come from elsewhere: the
engine's seeded initial candidates, or `--set`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nas_operator.backends.kubernetes import TRIAL_LOG_MOUNT, build_job
from nas_operator.core.backend import render_launch
from nas_operator.core.state import TrialRecord, trial_name
from nas_operator.resource.policy import TrialPolicy
from nas_operator.resource.spec import NASExperimentSpec
from nas_operator.resource.spec_checks import load_experiment, parse_duration

PLACEHOLDER_UID = "00000000-0000-0000-0000-000000000000"
"""The experiment uid when none is given: the API server assigns the real one at creation."""


class RenderError(ValueError):
    """The trial cannot be rendered as asked (a parameter that does not exist, a trial the engine cannot tell)."""


def candidate(spec: NASExperimentSpec, index: int, name: str) -> tuple[dict[str, Any], str]:
    """Trial `index`'s parameters and generator, as a fresh engine proposes them with the spec's seed.

    For the initial (space-filling) trials these are the operator's: the sequence depends only on
    algorithm.seed. Later trials depend on earlier results, which a render does not have.
    """
    from nas_operator.search.engine import Engine

    proposed = Engine.create(spec, name=name).generate(index + 1)
    if index >= len(proposed):
        raise RenderError(
            f"trial {index} is not among the initial trials the engine proposes without results "
            f"({len(proposed)} here): give every parameter with --set"
        )
    chosen = proposed[index]
    return dict(chosen.parameters), chosen.generator


def render_trial_job(
    document: Mapping[str, Any],
    index: int,
    namespace: str,
    *,
    policy: TrialPolicy | None = None,
    uid: str = PLACEHOLDER_UID,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Job manifest for trial `index` of the NASExperiment `document`.

    SpecError when the spec breaks a rule or the policy (with the field), RenderError when
    `overrides` names an unknown parameter or the engine cannot tell the trial's parameters.
    """
    if index < 0:
        raise RenderError("--trial must be 0 or more")
    policy = policy or TrialPolicy()
    experiment = load_experiment(document, policy=policy, cluster=True)
    spec, name = experiment.spec, experiment.metadata.name
    overrides = dict(overrides or {})
    names = [p.name for p in spec.parameters]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise RenderError(f"--set {unknown[0]}: no such parameter (spec.parameters: {', '.join(names)})")
    if set(names) <= set(overrides):
        parameters, generator = {n: overrides[n] for n in names}, "manual"
    else:
        proposed, generator = candidate(spec, index, name)
        parameters = {**proposed, **overrides}
    trial = TrialRecord(index, trial_name(name, index), parameters, generator)
    timeout = parse_duration(spec.budget.trial_timeout) if spec.budget.trial_timeout else None
    launch = render_launch(name, trial, spec.trial, TRIAL_LOG_MOUNT, TRIAL_LOG_MOUNT, timeout)
    return build_job(launch, spec, namespace, _owner_reference(name, uid), experiment_uid=uid, policy=policy)


def _owner_reference(name: str, uid: str) -> dict[str, Any]:
    from nas_operator.cluster.controller import owner_reference

    return owner_reference(name, uid)
