"""The NASExperiment resource as pydantic models: the single source of the CRD schema.

The models check shape and types only. Rules that relate several fields (a threshold on an
unknown metric, a placeholder naming no parameter, a budget below the initial trials) live
in `spec_checks`, which reports all of them at once with their field paths; a user fixing a
spec should not have to discover problems one at a time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

API_GROUP = "nas.operator.dev"
API_VERSION = "v1alpha1"
KIND = "NASExperiment"
PLURAL = "nasexperiments"
SHORT_NAME = "nasx"

Scalar = int | float | str | bool
# Go-style durations ("90s", "1h30m") or plain seconds, as Kubernetes users write them.
Duration = Annotated[
    str | int,
    Field(
        description='Duration: seconds as an integer, or a string such as "90s", "15m", "1h30m", "2d".',
    ),
]


class SpecModel(BaseModel):
    """Base for every spec object: camelCase on the wire, snake_case in Python, no unknown keys."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class Parameter(SpecModel):
    """One dimension of the search space; `type` says which of the other fields apply."""

    name: str = Field(description="Name used by the model, in placeholders and in results.")
    type: Literal["range", "choice", "fixed"] = Field(
        description="range: a numeric interval; choice: a list of values; fixed: one value."
    )
    value_type: Literal["int", "float"] | None = Field(
        default=None, description="range only: int or float (default float)."
    )
    lower: float | None = Field(default=None, description="range only: lower bound (inclusive).")
    upper: float | None = Field(default=None, description="range only: upper bound (inclusive).")
    log_scale: bool = Field(default=False, description="range only: search on a log scale (bounds > 0).")
    values: list[Scalar] | None = Field(default=None, description="choice only: the candidate values (>= 2).")
    ordered: bool | None = Field(
        default=None,
        description="choice only: whether the values have an order (default: true when all are numbers).",
    )
    value: Scalar | None = Field(default=None, description="fixed only: the value.")

    @property
    def is_int(self) -> bool:
        return self.value_type == "int"


class Objective(SpecModel):
    """A metric to maximize or minimize; its threshold is the worst value still of interest."""

    metric: str
    goal: Literal["maximize", "minimize"]
    threshold: float | None = Field(
        default=None,
        description=(
            "Worst acceptable value (the hypervolume reference point). Trials worse than any "
            "threshold are not on the Pareto front. Inferred by the model when absent."
        ),
    )

    @property
    def minimize(self) -> bool:
        return self.goal == "minimize"


class Budget(SpecModel):
    """When the experiment stops, and how much runs at once."""

    max_trials: int = Field(ge=1, description="Trials to launch in total.")
    parallelism: int = Field(default=1, ge=1, description="Trials running at the same time.")
    max_failure_rate: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Stop with FailureRateExceeded when failed / finished trials exceeds this ...",
    )
    min_failed_trials: int = Field(
        default=5, ge=1, description="... once at least this many trials have failed (Ax's rule)."
    )
    max_duration: Duration | None = Field(default=None, description="Wall-clock budget of the experiment.")
    trial_timeout: Duration | None = Field(default=None, description="A trial running longer is killed and failed.")


class Algorithm(SpecModel):
    """How candidates are chosen: quasi-random initialisation, then Bayesian optimisation."""

    name: Literal["auto", "sobol", "qnehvi", "saasbo"] = Field(
        default="auto",
        description=(
            "auto: Sobol then qLogNEHVI (Ax's default); sobol: quasi-random only; qnehvi: "
            "Sobol then qLogNEHVI with a GP; saasbo: Sobol then qLogNEHVI with a SAAS GP "
            "(for many parameters)."
        ),
    )
    initial_trials: int | None = Field(default=None, ge=1, description="Sobol trials before the model takes over.")
    seed: int | None = Field(default=None, description="Random seed, for reproducible candidates.")


class EnvVar(SpecModel):
    name: str
    value: str = Field(default="", description="May hold {parameter} placeholders.")


class Resources(SpecModel):
    cpu: str | None = Field(default=None, description='CPU request and limit, e.g. "2" or "500m".')
    memory: str | None = Field(default=None, description='Memory request and limit, e.g. "4Gi".')
    gpu: int = Field(default=0, ge=0, description="nvidia.com/gpu count.")


class Toleration(SpecModel):
    """A pod toleration, as in core/v1 (GPU node pools are usually tainted)."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class TrialTemplate(SpecModel):
    """The program that trains and evaluates one candidate."""

    image: str | None = Field(default=None, description="Container image (Kubernetes only).")
    command: list[str] = Field(
        min_length=1,
        description=(
            "Command with {parameter} placeholders; also {trial_dir}, {log_dir}, {trial_index}, "
            "{trial_name}, {experiment}. Locally, a bare python runs in nasctl's own environment."
        ),
    )
    args: list[str] = Field(default_factory=list, description="Arguments, with placeholders like command.")
    env: list[EnvVar] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)
    service_account_name: str | None = None
    mounts: list[str] = Field(
        default_factory=list,
        description='Extra volumes in TorchX mount syntax, e.g. "type=volume,src=datasets,dst=/data,readonly" '
        '(a PersistentVolumeClaim) or "type=bind,src=/mnt/cache,dst=/cache" (a hostPath).',
    )
    retries: int = Field(default=0, ge=0, description="Times a failed trial is retried before it counts as failed.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels a trial pod must match (Kubernetes only)."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints trial pods tolerate, e.g. a GPU pool's (Kubernetes only)."
    )


class MetricDefinition(SpecModel):
    """Where one metric is found in the trial's TensorBoard logs, and how its curve is reduced."""

    name: str
    tag: str | None = Field(default=None, description="TensorBoard scalar tag (default: the metric name).")
    reduce: Literal["last", "max", "min"] = Field(
        default="last", description="Value of the curve to use: the last step, the maximum or the minimum."
    )

    @property
    def effective_tag(self) -> str:
        return self.tag or self.name


class MetricsSource(SpecModel):
    """How the operator reads a finished trial's metrics."""

    source: Literal["tensorboard", "terminationMessage"] = Field(
        default="tensorboard",
        description="tensorboard: event files under the trial's log dir; terminationMessage: JSON {metric: value}.",
    )
    claim_name: str | None = Field(
        default=None, description="PersistentVolumeClaim shared by trials and operator (Kubernetes, tensorboard)."
    )
    definitions: list[MetricDefinition] = Field(
        default_factory=list,
        description="Tags and reductions. Objectives not listed use their name as tag and the last value.",
    )


class SecretKeyRef(SpecModel):
    name: str
    key: str = "url"


class Storage(SpecModel):
    """Where the engine's state lives between reconcile steps."""

    type: Literal["configmap", "sql", "file"] = Field(
        default="configmap",
        description="configmap: one gzip ConfigMap per experiment; sql: a database (SQLAlchemy URL in a Secret); "
        "file: local runs.",
    )
    secret_ref: SecretKeyRef | None = Field(default=None, description="sql only: Secret key holding the URL.")


class NASExperimentSpec(SpecModel):
    parameters: list[Parameter] = Field(min_length=1)
    parameter_constraints: list[str] = Field(
        default_factory=list, description='Linear constraints such as "hidden_size_2 <= hidden_size_1".'
    )
    objectives: list[Objective] = Field(min_length=2)
    outcome_constraints: list[str] = Field(
        default_factory=list, description='Constraints on non-objective metrics, e.g. "latency_p99_ms <= 5".'
    )
    budget: Budget
    algorithm: Algorithm = Field(default_factory=Algorithm)
    trial: TrialTemplate
    metrics: MetricsSource = Field(default_factory=MetricsSource)
    storage: Storage = Field(default_factory=Storage)
    suspend: bool = Field(default=False, description="Stop launching trials; running ones finish.")


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata this project reads; everything else passes through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    namespace: str | None = None


class NASExperiment(SpecModel):
    api_version: Literal["nas.operator.dev/v1alpha1"]
    kind: Literal["NASExperiment"]
    metadata: ObjectMeta
    spec: NASExperimentSpec


# ---------------------------------------------------------------------------------------------
# Status


class Condition(SpecModel):
    """A Kubernetes-style condition (type/status/reason/message), as `kubectl describe` shows it."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class TrialCounts(SpecModel):
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    stopped: int = 0


class ParetoPoint(SpecModel):
    trial: str
    index: int
    parameters: dict[str, Any]
    metrics: dict[str, float]


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Stopped"]


class NASExperimentStatus(SpecModel):
    phase: Phase = "Pending"
    reason: str = ""
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    trials: TrialCounts = Field(default_factory=TrialCounts)
    pareto_front: list[ParetoPoint] = Field(default_factory=list)
    pareto_size: int = 0
    hypervolume: float | None = None
    started_at: str | None = None
    finished_at: str | None = None
