"""What the loop needs from wherever trials run, and how a trial's command is rendered."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from nas_operator.core.state import TrialRecord
from nas_operator.resource.spec import TrialTemplate

ObservedStatus = Literal["running", "succeeded", "failed", "missing"]


@dataclass(frozen=True)
class TrialLaunch:
    """Everything a backend needs to start one trial, placeholders already filled in."""

    experiment: str
    index: int
    name: str
    attempt: int
    parameters: dict[str, Any]
    command: list[str]
    env: dict[str, str]
    log_dir: str
    trial_dir: str
    template: TrialTemplate
    timeout_seconds: float | None = None


@dataclass
class Observation:
    """A backend's answer about one trial."""

    status: ObservedStatus
    exit_code: int | None = None
    message: str = ""  # why it failed, or the termination message on success
    handle: dict[str, Any] | None = None  # an updated handle (a retry started, say)
    termination_message: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Where this trial's logs are, when the backend knows better than `log_dir()` (the directory of the one pod
    # that succeeded, so a retried pod's or an earlier run's events are never read).
    log_dir: Path | None = None


class LaunchError(Exception):
    """The trial cannot be started, now or later (the message says why); the trial fails with it.

    Raised, for example, when an object of the trial's name exists but belongs to another experiment or was created
    with other parameters: adopting it would record a foreign result.
    """


class TransientLaunchError(Exception):
    """Starting the trial failed in a way worth retrying (throttled, a server error, a timeout).

    The trial stays `launching` and the loop retries with backoff; since the create may have succeeded before the
    error reached us, the backend's launch must adopt what it finds on the retry.
    """


class Backend(Protocol):
    """Starts, observes and stops trials. Every method must be safe to call again after a restart."""

    def launch(self, launch: TrialLaunch) -> dict[str, Any]:
        """Start the trial; return a JSON-safe handle. Starting one that already exists adopts it."""
        ...

    def poll(self, trial: TrialRecord) -> Observation: ...

    def kill(self, trial: TrialRecord) -> None:
        """Stop the trial if it runs; a trial that is gone already is fine."""
        ...

    def log_dir(self, experiment: str, trial_name: str) -> Path:
        """Where this process can read the trial's TensorBoard logs."""
        ...

    def live_log_dir(self, experiment: str, trial: TrialRecord) -> Path | None:
        """Where the running attempt of the trial writes its logs now (for partial curves); None if not known yet."""
        ...

    def trial_paths(self, experiment: str, trial_name: str) -> tuple[str, str]:
        """({log_dir}, {trial_dir}) as the trial itself sees them (inside its container, say)."""
        ...


def format_value(value: Any) -> str:
    """A parameter as a command-line string: full float precision, lowercase booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


# `{name}` fields and the `{{`/`}}` escapes, nothing else: validation refuses format specs, conversions and
# attribute or index access, and rendering must never fail nor amplify (`{x:>4000000000}` would build a 4 GB string).
_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")


def render(template: str, values: Mapping[str, Any]) -> str:
    """Fill `{name}` placeholders; anything else (an unknown name, a stray brace) is left as written.

    Total by construction: a spec stored before a validation rule existed can never make a launch raise.
    """

    def replace(match: re.Match[str]) -> str:
        text = match.group(0)
        if text in ("{{", "}}"):
            return text[0]
        name = match.group(1)
        return format_value(values[name]) if name in values else text

    return _FIELD.sub(replace, template)


def render_launch(
    experiment: str,
    trial: TrialRecord,
    template: TrialTemplate,
    log_dir: str,
    trial_dir: str,
    timeout_seconds: float | None,
) -> TrialLaunch:
    """Fill the trial template's placeholders for one trial."""
    values: dict[str, Any] = dict(trial.parameters)
    values.update(
        trial_dir=trial_dir,
        log_dir=log_dir,
        trial_index=trial.index,
        trial_name=trial.name,
        experiment=experiment,
    )
    command = [render(part, values) for part in [*template.command, *template.args]]
    env = {e.name: render(e.value, values) for e in template.env}
    env.update(
        NAS_EXPERIMENT=experiment,
        NAS_TRIAL_NAME=trial.name,
        NAS_TRIAL_INDEX=str(trial.index),
        NAS_LOG_DIR=log_dir,
        NAS_TRIAL_DIR=trial_dir,
        NAS_PARAMETERS=json.dumps(trial.parameters, sort_keys=True),
    )
    return TrialLaunch(
        experiment=experiment,
        index=trial.index,
        name=trial.name,
        attempt=trial.attempt,
        parameters=dict(trial.parameters),
        command=command,
        env=env,
        log_dir=log_dir,
        trial_dir=trial_dir,
        template=template,
        timeout_seconds=timeout_seconds,
    )
