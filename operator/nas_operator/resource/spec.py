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

from nas_operator.resource import limits as L
from nas_operator.resource.quantities import QUANTITY_REGEX

API_GROUP = "nas.operator.dev"
API_VERSION = "v1alpha1"
KIND = "NASExperiment"
PLURAL = "nasexperiments"
SHORT_NAME = "nasx"

ENV_NAME_REGEX = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""Environment variable names a shell (and every program reading its environment) can use."""

ChoiceString = Annotated[str, Field(max_length=L.MAX_CHOICE_STRING_LENGTH)]
Scalar = int | float | ChoiceString | bool
Name = Annotated[str, Field(max_length=L.MAX_NAME_LENGTH)]
Template = Annotated[str, Field(max_length=L.MAX_TEMPLATE_LENGTH)]
Constraint = Annotated[str, Field(max_length=L.MAX_CONSTRAINT_LENGTH)]
K8sName = Annotated[str, Field(max_length=L.MAX_K8S_NAME_LENGTH)]
Quantity = Annotated[str, Field(max_length=L.MAX_QUANTITY_LENGTH, pattern=QUANTITY_REGEX)]
# Go-style durations ("90s", "1h30m") or plain seconds, as Kubernetes users write them.
Duration = Annotated[
    Annotated[str, Field(max_length=L.MAX_DURATION_LENGTH)] | int,
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
        # An infinite or NaN bound, threshold or rate is a mistake, never a meaningful value.
        allow_inf_nan=False,
    )


class Parameter(SpecModel):
    """One dimension of the search space; `type` says which of the other fields apply."""

    name: Name = Field(description="Name used by the model, in placeholders and in results.")
    type: Literal["range", "choice", "fixed"] = Field(
        description="range: a numeric interval; choice: a list of values; fixed: one value."
    )
    value_type: Literal["int", "float"] | None = Field(
        default=None, description="range only: int or float (default float)."
    )
    lower: float | None = Field(
        default=None, ge=-L.MAX_ABS_BOUND, le=L.MAX_ABS_BOUND, description="range only: lower bound (inclusive)."
    )
    upper: float | None = Field(
        default=None, ge=-L.MAX_ABS_BOUND, le=L.MAX_ABS_BOUND, description="range only: upper bound (inclusive)."
    )
    log_scale: bool = Field(default=False, description="range only: search on a log scale (bounds > 0).")
    values: list[Scalar] | None = Field(
        default=None, max_length=L.MAX_CHOICE_VALUES, description="choice only: the candidate values (>= 2)."
    )
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

    metric: Name
    goal: Literal["maximize", "minimize"]
    threshold: float | None = Field(
        default=None,
        description=(
            "Worst acceptable value (the hypervolume reference point). Trials worse than any "
            "threshold are not on the Pareto front (with one objective: cannot be the best trial). "
            "Inferred by the model when absent."
        ),
    )

    @property
    def minimize(self) -> bool:
        return self.goal == "minimize"


class Convergence(SpecModel):
    """Stop the search when the last `window` succeeded trials improved it by less than `minImprovement`.

    Several objectives: the improvement is the hypervolume's gain over the window as a fraction of the hypervolume
    at its start (no decision while that is 0). One objective: the best value's gain over the window as a fraction
    of the interquartile range of the feasible values seen (Ax's ImprovementGlobalStoppingStrategy measures both the
    same way). Trials running when it holds finish; nothing new is launched.
    """

    window: int = Field(default=20, ge=1, le=L.MAX_TRIALS, description="Succeeded trials the improvement is over.")
    min_improvement: float = Field(
        default=0.01, ge=0.0, le=L.MAX_ABS_BOUND, description="The fraction below which the search has converged."
    )
    min_trials: int | None = Field(
        default=None,
        ge=1,
        le=L.MAX_TRIALS,
        description="Succeeded trials before any decision (absent: the window after the initial trials).",
    )


class Budget(SpecModel):
    """When the experiment stops, and how much runs at once."""

    max_trials: int = Field(ge=1, le=L.MAX_TRIALS, description="Trials to launch in total.")
    parallelism: int = Field(default=1, ge=1, le=L.MAX_PARALLELISM, description="Trials running at the same time.")
    max_failure_rate: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="Stop with FailureRateExceeded when failed / finished trials exceeds this ...",
    )
    min_failed_trials: int = Field(
        default=5, ge=1, le=L.MAX_TRIALS, description="... once at least this many trials have failed (Ax's rule)."
    )
    max_duration: Duration | None = Field(default=None, description="Wall-clock budget of the experiment.")
    trial_timeout: Duration | None = Field(default=None, description="A trial running longer is killed and failed.")
    convergence: Convergence | None = Field(
        default=None, description="Stop with Converged once the search stops improving (off unless given)."
    )


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
    initial_trials: int | None = Field(
        default=None, ge=1, le=L.MAX_TRIALS, description="Sobol trials before the model takes over."
    )
    seed: int | None = Field(default=None, ge=0, le=L.MAX_SEED, description="Random seed, for reproducible candidates.")


class EnvVar(SpecModel):
    name: str = Field(
        max_length=L.MAX_ENV_NAME_LENGTH,
        pattern=ENV_NAME_REGEX,
        description="A letter or _, then letters, digits or _; names starting with NAS_ are the runtime's.",
    )
    value: Template = Field(default="", description="May hold {parameter} placeholders.")


class Resources(SpecModel):
    cpu: Quantity | None = Field(default=None, description='CPU request and limit, e.g. "2" or "500m".')
    memory: Quantity | None = Field(default=None, description='Memory request and limit, e.g. "4Gi".')
    gpu: int = Field(default=0, ge=0, le=L.MAX_GPUS, description="nvidia.com/gpu count.")


class Toleration(SpecModel):
    """A pod toleration, as in core/v1 (GPU node pools are usually tainted)."""

    key: str | None = Field(default=None, max_length=L.MAX_LABEL_KEY_LENGTH)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=L.MAX_LABEL_VALUE_LENGTH)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=L.MAX_TOLERATION_SECONDS)


class TrialTemplate(SpecModel):
    """The program that trains and evaluates one candidate."""

    image: str | None = Field(
        default=None, min_length=1, max_length=L.MAX_IMAGE_LENGTH, description="Container image (Kubernetes only)."
    )
    command: list[Template] = Field(
        min_length=1,
        max_length=L.MAX_COMMAND_ENTRIES,
        description=(
            "Command with {parameter} placeholders; also {trial_dir}, {log_dir}, {trial_index}, "
            "{trial_name}, {experiment}. Locally, a bare python runs in nasctl's own environment."
        ),
    )
    args: list[Template] = Field(
        default_factory=list, max_length=L.MAX_ARGS_ENTRIES, description="Arguments, with placeholders like command."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=L.MAX_ENV_ENTRIES)
    resources: Resources = Field(default_factory=Resources)
    service_account_name: K8sName | None = Field(
        default=None, description="Only the ServiceAccounts the trial policy lists (default: none but default)."
    )
    mounts: list[Annotated[str, Field(max_length=L.MAX_MOUNT_LENGTH)]] = Field(
        default_factory=list,
        max_length=L.MAX_MOUNTS,
        description='Extra volumes in TorchX mount syntax, e.g. "type=volume,src=datasets,dst=/data,readonly" '
        '(a PersistentVolumeClaim) or "type=bind,src=/mnt/cache,dst=/cache" (a hostPath; only if the trial '
        "policy allows bind mounts).",
    )
    retries: int = Field(
        default=0, ge=0, le=L.MAX_RETRIES, description="Times a failed trial is retried before it counts as failed."
    )
    node_selector: dict[
        Annotated[str, Field(max_length=L.MAX_LABEL_KEY_LENGTH)],
        Annotated[str, Field(max_length=L.MAX_LABEL_VALUE_LENGTH)],
    ] = Field(
        default_factory=dict,
        max_length=L.MAX_NODE_SELECTOR,
        description="Node labels a trial pod must match (Kubernetes only).",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=L.MAX_TOLERATIONS,
        description="Taints trial pods tolerate, e.g. a GPU pool's (Kubernetes only).",
    )


class TrialOverrides(SpecModel):
    """What stage 2 changes in spec.trial: a field given here replaces spec.trial's; env is merged by name."""

    image: str | None = Field(default=None, min_length=1, max_length=L.MAX_IMAGE_LENGTH)
    command: list[Template] | None = Field(default=None, min_length=1, max_length=L.MAX_COMMAND_ENTRIES)
    args: list[Template] | None = Field(
        default=None, max_length=L.MAX_ARGS_ENTRIES, description="Replaces spec.trial.args (e.g. more epochs)."
    )
    env: list[EnvVar] = Field(
        default_factory=list, max_length=L.MAX_ENV_ENTRIES, description="Added to spec.trial.env; same name: replaced."
    )
    resources: Resources | None = Field(default=None, description="Replaces spec.trial.resources (e.g. more GPUs).")
    retries: int | None = Field(default=None, ge=0, le=L.MAX_RETRIES)


class FullTraining(SpecModel):
    """Stage 2: after the search, train the best candidates again in full (the two-stage NAS workflow).

    The search's trials are the proxy task (a data subset, few epochs); up to `candidates` of them, taken from the
    proxy Pareto front first and then from the next non-dominated layers, are trained again with `trial`'s
    overrides. The status then holds both fronts and how well the proxy ranked the candidates (Kendall's tau).
    """

    candidates: int = Field(
        default=10, ge=1, le=L.MAX_FULL_TRAINING_CANDIDATES, description="Search trials to train in full, at most."
    )
    parallelism: int | None = Field(
        default=None, ge=1, le=L.MAX_PARALLELISM, description="Full trainings at once (default: budget.parallelism)."
    )
    trial: TrialOverrides = Field(default_factory=TrialOverrides)
    trial_timeout: Duration | None = Field(
        default=None, description="A full training running longer is killed and failed (default: budget.trialTimeout)."
    )
    min_rank_correlation: float = Field(
        default=0.5,
        ge=-1.0,
        le=1.0,
        description="Below this Kendall's tau between proxy and full metrics (any objective), a Warning condition.",
    )


class MetricDefinition(SpecModel):
    """Where one metric is found in the trial's TensorBoard logs, and how its curve is reduced."""

    name: Name
    tag: str | None = Field(
        default=None, max_length=L.MAX_TAG_LENGTH, description="TensorBoard scalar tag (default: the metric name)."
    )
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
    claim_name: K8sName | None = Field(
        default=None,
        description="PersistentVolumeClaim shared by trials and operator; required on Kubernetes with tensorboard "
        "(each trial mounts only its own directory of it).",
    )
    definitions: list[MetricDefinition] = Field(
        default_factory=list,
        max_length=L.MAX_METRIC_DEFINITIONS,
        description="Tags and reductions. Objectives not listed use their name as tag and the last value.",
    )


class SecretKeyRef(SpecModel):
    name: K8sName
    key: str = Field(default="url", max_length=L.MAX_K8S_NAME_LENGTH)


class Storage(SpecModel):
    """Where the engine's state lives between reconcile steps."""

    type: Literal["configmap", "sql", "file"] = Field(
        default="configmap",
        description="configmap: one gzip ConfigMap per experiment; sql: a database (SQLAlchemy URL in a Secret); "
        "file: local runs.",
    )
    secret_ref: SecretKeyRef | None = Field(default=None, description="sql only: Secret key holding the URL.")


class EarlyStopping(SpecModel):
    """When a running trial may be stopped from its partial learning curves (off unless this block is given).

    A trial is stopped only when, at its current progression, even the largest improvement that a finished trial
    made after the same progression would not bring it inside every objective threshold and outcome constraint, or
    would leave it dominated by a trial already measured (it could add no hypervolume). docs/early-stopping.md says
    why that is sound and where it can be wrong.
    """

    progression: Annotated[str, Field(max_length=L.MAX_TAG_LENGTH, min_length=1)] = Field(
        default="step",
        description='What measures training progress: "step" (the TensorBoard step of the metrics) or a scalar tag '
        'the trial logs, such as "epoch".',
    )
    min_progression: float = Field(
        ge=0, le=L.MAX_ABS_BOUND, description="No trial is judged before it has reached this progression."
    )
    decision_interval: float | None = Field(
        default=None,
        ge=0,
        le=L.MAX_ABS_BOUND,
        description="Progression between two decisions on one trial (absent or 0: whenever it has progressed).",
    )
    projection: Literal["gain", "relative"] = Field(
        default="gain",
        description="How a finished trial's curve bounds a running one's: gain adds the largest change a finished "
        "trial made after the same progression; relative scales the running trial's own change so far by finished "
        "trials' change after that point per change before it (docs/early-stopping.md).",
    )
    min_reference_trials: int = Field(
        default=3,
        ge=1,
        le=L.MAX_TRIALS,
        description="Trials that must have finished their training, curves read, before any trial is judged.",
    )


ExperimentName = Annotated[str, Field(max_length=L.MAX_EXPERIMENT_NAME, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]


class WarmStart(SpecModel):
    """Earlier experiments whose finished trials the model gets before its first candidate (core/prior_trials.py).

    Read once, when this experiment starts; their trials are copied into its state, so changing or deleting a
    source later changes nothing here. Only trials that fit this search space are used (the rest are counted).
    """

    experiments: list[ExperimentName] = Field(
        min_length=1,
        max_length=L.MAX_WARM_START_SOURCES,
        description="NASExperiments in this namespace (nasctl run: results directories beside this one's, "
        "nas-results/<name>, or given with --warm-start).",
    )


class NASExperimentSpec(SpecModel):
    parameters: list[Parameter] = Field(min_length=1, max_length=L.MAX_PARAMETERS)
    parameter_constraints: list[Constraint] = Field(
        default_factory=list,
        max_length=L.MAX_PARAMETER_CONSTRAINTS,
        description='Linear constraints such as "hidden_size_2 <= hidden_size_1".',
    )
    objectives: list[Objective] = Field(
        min_length=1,
        max_length=L.MAX_OBJECTIVES,
        description="One objective: a hyperparameter search whose status names the best trial. Two or more: a "
        "multi-objective search whose status holds the Pareto front and its hypervolume.",
    )
    outcome_constraints: list[Constraint] = Field(
        default_factory=list,
        max_length=L.MAX_OUTCOME_CONSTRAINTS,
        description='Constraints on non-objective metrics, e.g. "latency_p99_ms <= 5".',
    )
    budget: Budget
    algorithm: Algorithm = Field(default_factory=Algorithm)
    trial: TrialTemplate
    metrics: MetricsSource = Field(default_factory=MetricsSource)
    storage: Storage = Field(default_factory=Storage)
    early_stopping: EarlyStopping | None = Field(
        default=None, description="Stop hopeless trials from their partial learning curves (off by default)."
    )
    full_training: FullTraining | None = Field(
        default=None, description="Stage 2: train the search's best candidates again in full (off unless given)."
    )
    warm_start: WarmStart | None = Field(
        default=None, description="Start the model from earlier experiments' finished trials (off unless given)."
    )
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
    early_stopped: int = 0


class ParetoPoint(SpecModel):
    trial: str
    index: int
    parameters: dict[str, Any]
    metrics: dict[str, float]


class FullTrainingStatus(SpecModel):
    candidates: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    pareto_front: list[ParetoPoint] = Field(default_factory=list, description="The front on full-training metrics.")
    pareto_size: int = 0
    hypervolume: float | None = None
    best_trial: ParetoPoint | None = Field(default=None, description="One objective: the best full training.")
    rank_correlation: dict[str, float] = Field(
        default_factory=dict, description="Kendall's tau between proxy and full metrics, per objective."
    )


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Stopped"]


class NASExperimentStatus(SpecModel):
    phase: Phase = "Pending"
    reason: str = ""
    message: str = ""
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    trials: TrialCounts = Field(default_factory=TrialCounts)
    pareto_front: list[ParetoPoint] = Field(default_factory=list)
    pareto_size: int | None = None
    hypervolume: float | None = None
    best_trial: ParetoPoint | None = Field(default=None, description="One objective: the best feasible trial.")
    best_value: float | None = Field(default=None, description="One objective: its value.")
    full_training: FullTrainingStatus | None = Field(
        default=None, description="Stage 2: the candidates trained in full, their front, the proxy's rank correlation."
    )
    warm_start_trials: int | None = Field(
        default=None, description="Earlier experiments' trials the model started from (spec.warmStart)."
    )
    training_seconds_saved: float | None = Field(
        default=None, description="Training time early stopping is estimated to have saved, in seconds."
    )
    started_at: str | None = None
    finished_at: str | None = None
