"""The optimizer: the one module that talks to Ax.

It turns a checked spec into an Ax `Client` (search space, objectives whose thresholds are
the hypervolume reference point, outcome constraints, generation strategy), hands out
candidates, takes results back, and says in a small snapshot where generation stands. Everything
else in the project sees plain Python values, so it can be tested, stored and reasoned about
without Ax.

State: the loop's trial table is the record (parameters, who proposed each trial, how it ended,
its metrics). On restore the Ax experiment is rebuilt from it with the calls the live engine made,
plus the snapshot's generation-strategy position and per-node generator state (Sobol's seed and
draw count). Ax's own JSON snapshot grows ~18 KB per trial and its encoder rebuilds every trial's
frame at each save; this one stays a few hundred bytes.

Generation strategy: Ax's own dispatch (center point, Sobol, then BoTorch's modular model
whose multi-objective default is qLogNEHVI) with two deliberate settings:
`allow_exceeding_initialization_budget=True`, so a free slot gets a Sobol point instead of an
empty answer while the initial trials are still running, and the experiment's seed applied
to every generation call, so a restored engine continues the same Sobol sequence and its model
candidates are reproducible (a cold GP refit; the original process warm-starts the fit in
memory, so its model candidates may differ slightly from a restored one's).
"""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from nas_operator.resource.spec import NASExperimentSpec, Parameter
from nas_operator.resource.spec_checks import (
    metric_directions,
    parse_outcome_constraint,
    parse_parameter_constraint,
)

Scalar = int | float | str | bool
# nas-engine/2: a few hundred bytes whatever the experiment's size (the generation strategy's position and each
# generation node's last state, such as Sobol's draw count); the trials come from the loop's trial table on restore.
# ax-client-json/1: Ax's whole JSON snapshot (about 18 KB per trial, and its encoder rebuilds every trial's frame at
# each save); still read, so a state saved by an earlier version restores.
SNAPSHOT_FORMAT = "nas-engine/2"
LEGACY_SNAPSHOT_FORMAT = "ax-client-json/1"
TrialOutcomeStatus = Literal["pending", "completed", "failed", "abandoned", "early_stopped"]
SAASBO_MIN_PARAMETERS = 16  # auto switches to the SAAS model from this many tunable parameters

log = logging.getLogger(__name__)
# Import-time noise of Ax and its dependencies, which says nothing to a user of this tool: an
# INFO line about SQL storage (Ax loggers set their own level, so only a filter on that logger
# stops it) and torch.jit's deprecation warning raised by GPyTorch.
logging.getLogger("ax.storage.sqa_store.with_db_settings_base").addFilter(lambda r: r.levelno >= logging.WARNING)
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)


@dataclass(frozen=True)
class TrialOutcome:
    """What the engine needs of one trial to rebuild its experiment: the arm, who proposed it, how it ended.

    `metrics` are the trial's results (completed) or the estimates given at an early stop (early_stopped).
    """

    index: int
    parameters: Mapping[str, Scalar]
    generator: str
    status: TrialOutcomeStatus
    metrics: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""


@dataclass(frozen=True)
class PriorObservation:
    """An earlier experiment's finished trial, given to the model before this experiment's own (warm start)."""

    parameters: Mapping[str, Scalar]
    metrics: Mapping[str, float]


PRIOR_GENERATOR = "WarmStart"


def prior_outcomes(prior: list[PriorObservation]) -> list[TrialOutcome]:
    """Warm-start observations as the first trials of the experiment (indices 0..len-1, completed)."""
    return [
        TrialOutcome(index=i, parameters=o.parameters, generator=PRIOR_GENERATOR, status="completed", metrics=o.metrics)
        for i, o in enumerate(prior)
    ]


TRAINING_LIMIT = 256


@dataclass(frozen=True)
class ModelSettings:
    """How the model node's BoTorch pieces are configured (AX_DEFAULT_MODEL: Ax's own configuration).

    Kept here, not in the spec: each setting is measured (bench/generation.py, bench/sample_efficiency.py) and
    the defaults are the ones that cost no regret there. Not a setting: fewer MC samples (64 saved a quarter of a
    batch at 200 observations), because Ax hands acquisition options to whichever acquisition it picks, and the one
    it uses while no observation meets every threshold (qLogProbabilityOfFeasibility) refuses `mc_samples`.
    """

    warm_start: bool = True  # GP hyperparameters start from the previous fit's (search/warm_start.py)
    # Acquisition optimizer restarts and the raw samples their starting points are chosen from (None: Ax's 20 and
    # 1024). Halving both saved a third of a batch at 200 observations but cost regret on ZDT1 (log10 regret -1.23
    # against -1.46, 5 seeds), whose front lies on the boundary of the box: Ax's values stay.
    num_restarts: int | None = None
    raw_samples: int | None = None
    # Observations the GP is fitted on at most (search/training_subset.py): beyond it the model sees the best
    # non-dominated layers and a space-filling rest. None: every observation, as Ax does.
    training_limit: int | None = TRAINING_LIMIT
    # The SAAS model's NUTS chain (algorithm saasbo): warm-up steps, samples drawn, and every how many one is kept
    # (None: BoTorch's 512, 256 and 16, so 16 models). Each kept sample is a GP that every acquisition evaluation
    # runs through, so their number sets the price of a batch (bench/case_study.py).
    saas_warmup_steps: int | None = None
    saas_num_samples: int | None = None
    saas_thinning: int | None = None


AX_DEFAULT_MODEL = ModelSettings(warm_start=False, num_restarts=None, raw_samples=None, training_limit=None)


class GenerationError(RuntimeError):
    """The model cannot propose candidates for a reason a person must fix (a missing package); said in the status."""


@dataclass(frozen=True)
class Candidate:
    """A proposed trial: its index in the experiment and its full parameterization."""

    index: int
    parameters: dict[str, Scalar]
    generator: str


@contextmanager
def _quiet_ax() -> Iterator[None]:
    """Ax logs every trial at INFO and pandas warns on every frame; neither helps a user here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _configure_ax_logging() -> None:
    from ax.utils.common.logger import set_stderr_log_level

    set_stderr_log_level(logging.WARNING)
    for name in ("botorch", "gpytorch", "linear_operator"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _parameter_config(p: Parameter) -> Any:
    from ax import ChoiceParameterConfig, RangeParameterConfig

    if p.type == "range":
        assert p.lower is not None and p.upper is not None
        kind: Literal["int", "float"] = "int" if p.is_int else "float"
        bounds = (int(p.lower), int(p.upper)) if p.is_int else (float(p.lower), float(p.upper))
        return RangeParameterConfig(
            name=p.name,
            bounds=bounds,
            parameter_type=kind,
            scaling="log" if p.log_scale else "linear",
        )
    assert p.values is not None
    choice_kind, values = _choice_values(p)
    return ChoiceParameterConfig(name=p.name, values=values, parameter_type=choice_kind, is_ordered=_ordered(p))


def _choice_values(p: Parameter) -> tuple[Literal["bool", "int", "float", "str"], list[Any]]:
    assert p.values is not None
    values: list[Any] = list(p.values)
    if all(isinstance(v, bool) for v in values):
        return "bool", values
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return "int", values
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return "float", [float(v) for v in values]
    return "str", [str(v) for v in values]


def _ordered(p: Parameter) -> bool:
    """A choice's order: as declared, else numeric choices are ordered and the others are categories."""
    return p.ordered if p.ordered is not None else _choice_values(p)[0] in ("int", "float")


def objective_expression(spec: NASExperimentSpec) -> str:
    """Ax's objective string: "val_acc, -num_params"."""
    return ", ".join(("-" if o.minimize else "") + o.metric for o in spec.objectives)


def outcome_constraint_expressions(spec: NASExperimentSpec) -> list[str]:
    """Objective thresholds (Ax turns a bound on an objective into its threshold) and outcome constraints.

    With one objective Ax refuses a bound on it (it would be a constraint on the objective), so its threshold stays
    ours: it decides which trials may be the best one (search/pareto.py), not what the model looks for.
    """
    expressions = []
    for objective in spec.objectives if len(spec.objectives) > 1 else []:
        if objective.threshold is not None:
            op = "<=" if objective.minimize else ">="
            expressions.append(f"{objective.metric} {op} {objective.threshold!r}")
    for text in spec.outcome_constraints:
        constraint = parse_outcome_constraint(text)
        expressions.append(f"{constraint.metric} {constraint.op} {constraint.bound!r}")
    return expressions


def model_metrics(spec: NASExperimentSpec) -> list[str]:
    """The metrics Ax models: objectives and constrained metrics."""
    names = [o.metric for o in spec.objectives]
    names += [parse_outcome_constraint(c).metric for c in spec.outcome_constraints]
    return names


def _generation_method(spec: NASExperimentSpec) -> str:
    tunable = sum(1 for p in spec.parameters if p.type != "fixed")
    name = spec.algorithm.name
    if name == "auto":
        name = "saasbo" if tunable >= SAASBO_MIN_PARAMETERS else "qnehvi"
    return {"sobol": "random_search", "qnehvi": "fast", "saasbo": "quality"}[name]


def _missing_package_message(spec: NASExperimentSpec, exc: ImportError) -> str:
    if _generation_method(spec) == "quality":
        return (
            f"the SAAS model (spec.algorithm.name {spec.algorithm.name!r}; auto picks it from {SAASBO_MIN_PARAMETERS} "
            f"tunable parameters) needs JAX and NumPyro (botorch[fully-bayesian]), which this installation lacks "
            f"({exc}); install them, or set spec.algorithm.name to qnehvi"
        )
    return f"the model needs a Python package this installation lacks: {exc}"


@functools.cache
def _subset_baseline_acquisition() -> type:
    """Ax's Acquisition, whose noisy baseline is the model's training subset when the model was fitted on one.

    Built on first use, so that importing this module does not import Ax. Everything else (the acquisition Ax
    picks, the thresholds it infers from every observation, the points the optimizer must avoid) is Ax's.
    """
    from ax.generators.torch.botorch_modular.acquisition import Acquisition

    from nas_operator.search.training_subset import TrainingSubset

    class SubsetBaselineAcquisition(Acquisition):  # type: ignore[misc]
        def _construct_botorch_acquisition(self, *args: Any, **kwargs: Any) -> Any:
            subsets = [
                options["subset"]
                for config in self.surrogate.surrogate_spec.model_configs
                if isinstance((options := config.model_options or {}).get("subset"), TrainingSubset)
            ]
            observed = self.X_observed
            if subsets and observed is not None:
                models = [dataset.outcome_names for dataset in self.surrogate.training_data]
                self.X_observed = subsets[0].baseline(observed, models)
            try:
                return super()._construct_botorch_acquisition(*args, **kwargs)
            finally:
                self.X_observed = observed

    return SubsetBaselineAcquisition


# Ax's initialization nodes (the center point, Sobol): generation without a model.
INITIALIZATION_NODES = frozenset({"CenterOfSearchSpace", "Sobol"})


def _configure_model_node(client: Any, spec: NASExperimentSpec, settings: ModelSettings) -> None:
    """Apply `settings` to the generation strategy's model node (Ax's "MBM" node: a GP per outcome, qLogNEHVI).

    The model class replaces the one Ax would choose, so it applies only where Ax chooses BoTorch's SingleTaskGP: a
    space without unordered categories (with them Ax may choose MixedSingleTaskGP, fitted on every observation).
    """
    from ax.generators.torch.botorch_modular.surrogate import SurrogateSpec
    from ax.generators.torch.botorch_modular.utils import ModelConfig

    from nas_operator.search.single_task_gp import EngineSingleTaskGP
    from nas_operator.search.training_subset import TrainingSubset
    from nas_operator.search.warm_start import HyperparameterMemory

    node = client._generation_strategy.nodes_by_name.get("MBM")
    if node is None:
        return
    generator = node.generator_specs[0]
    categorical = any(p.type == "choice" and not _ordered(p) for p in spec.parameters)
    model_options: dict[str, Any] = {}
    if settings.warm_start:
        model_options["memory"] = HyperparameterMemory()
    if settings.training_limit is not None:
        goals = {metric: 1 if larger else -1 for metric, larger in metric_directions(spec).items()}
        model_options["subset"] = TrainingSubset(settings.training_limit, goals)
    if model_options and not categorical:
        config = ModelConfig(
            botorch_model_class=EngineSingleTaskGP, model_options=model_options, name="MBM defaults, configured"
        )
        generator.generator_kwargs["surrogate_spec"] = SurrogateSpec(model_configs=[config])
        if "subset" in model_options:
            generator.generator_kwargs["acquisition_class"] = _subset_baseline_acquisition()
    _configure_optimizer(generator, settings)


def _configure_saas_node(client: Any, settings: ModelSettings) -> None:
    """Apply `settings` to the SAAS model node (Ax's "quality" method: a warped SAAS GP fitted by NUTS, qLogNEHVI)."""
    node = client._generation_strategy.nodes_by_name.get("MBM")
    if node is None:
        return
    generator = node.generator_specs[0]
    chain = {
        key: value
        for key, value in (
            ("warmup_steps", settings.saas_warmup_steps),
            ("num_samples", settings.saas_num_samples),
            ("thinning", settings.saas_thinning),
        )
        if value is not None
    }
    if chain:
        spec = generator.generator_kwargs["surrogate_spec"]
        for config in spec.model_configs:
            config.mll_options = {**(config.mll_options or {}), **chain}
    _configure_optimizer(generator, settings)


def _configure_optimizer(generator: Any, settings: ModelSettings) -> None:
    """The acquisition optimizer's restarts and raw samples, where the settings name them."""
    optimizer = {
        key: value
        for key, value in (("num_restarts", settings.num_restarts), ("raw_samples", settings.raw_samples))
        if value is not None
    }
    options = dict(generator.generator_gen_kwargs.get("model_gen_options") or {})
    if optimizer:
        options["optimizer_kwargs"] = {**options.get("optimizer_kwargs", {}), **optimizer}
    if options:
        generator.generator_gen_kwargs["model_gen_options"] = options


class Engine:
    """An Ax experiment plus its generation strategy, behind a small plain-Python interface."""

    def __init__(self, spec: NASExperimentSpec, client: Any) -> None:
        self.spec = spec
        self._client = client
        self._fixed = {p.name: p.value for p in spec.parameters if p.type == "fixed"}
        self._metrics = model_metrics(spec)

    @property
    def client(self) -> Any:
        """Ax's Client, for the analyses in search/analysis.py (the other module allowed to use Ax)."""
        return self._client

    @classmethod
    def create(
        cls,
        spec: NASExperimentSpec,
        name: str = "nas",
        model: ModelSettings | None = None,
        prior: Iterable[PriorObservation] = (),
    ) -> Engine:
        """A new engine; `prior` (warm start) are earlier observations, given to the model before anything else.

        They take the first trial indices and count towards the initialization budget (Ax's default), so with
        enough of them the model, not Sobol, proposes the first candidate (no center point is asked for then: the
        earlier experiments have explored already).
        """
        observations = list(prior)
        engine = cls._configured(spec, name, model, warm=bool(observations))
        if observations:
            engine._replay(prior_outcomes(observations), {})
        return engine

    @classmethod
    def _configured(cls, spec: NASExperimentSpec, name: str, model: ModelSettings | None, warm: bool) -> Engine:
        from ax import Client

        _configure_ax_logging()
        with _quiet_ax():
            client = Client(random_seed=spec.algorithm.seed)
            client.configure_experiment(
                name=name,
                parameters=[_parameter_config(p) for p in spec.parameters if p.type != "fixed"],
                parameter_constraints=[str(parse_parameter_constraint(c)) for c in spec.parameter_constraints],
            )
            client.configure_optimization(
                objective=objective_expression(spec),
                outcome_constraints=outcome_constraint_expressions(spec),
            )
            method = _generation_method(spec)
            client.configure_generation_strategy(
                method=method,  # type: ignore[arg-type]
                initialization_budget=spec.algorithm.initial_trials,
                initialization_random_seed=spec.algorithm.seed,
                initialize_with_center=method != "random_search" and not warm,
                allow_exceeding_initialization_budget=True,
            )
            if method == "fast":
                _configure_model_node(client, spec, model or ModelSettings())
            elif method == "quality":
                _configure_saas_node(client, model or ModelSettings())
        return cls(spec, client)

    @classmethod
    def restore(
        cls,
        spec: NASExperimentSpec,
        snapshot: Mapping[str, Any],
        trials: Iterable[TrialOutcome],
        model: ModelSettings | None = None,
        prior: Iterable[PriorObservation] = (),
    ) -> Engine:
        """The engine as it was when `snapshot()` was taken, with `trials` (the loop's table) as its experiment.

        It goes on with the same candidates: the Sobol sequence continues where it was, and the model is fitted on
        the same data. With a legacy snapshot (Ax's whole JSON) `trials` is ignored: that snapshot holds its own, and
        the caller reconciles them with the table (core/loop.reconcile_engine).
        """
        form = snapshot.get("format")
        if form == LEGACY_SNAPSHOT_FORMAT:
            return cls._restore_legacy(spec, snapshot)
        if form != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown engine snapshot format {form!r}")
        observations = list(prior)
        engine = cls._configured(spec, str(snapshot.get("name") or "nas"), model, warm=bool(observations))
        engine._replay(prior_outcomes(observations) + sorted(trials, key=lambda t: t.index), snapshot)
        return engine

    @classmethod
    def _restore_legacy(cls, spec: NASExperimentSpec, snapshot: Mapping[str, Any]) -> Engine:
        from ax import Client

        _configure_ax_logging()
        with _quiet_ax():
            # Ax's decoder consumes the dicts it is given; the caller's snapshot must stay intact.
            client = Client._from_json_snapshot(snapshot=copy.deepcopy(dict(snapshot["client"])))
        # Ax's snapshot does not carry the client's seed; every generation call re-seeds with it.
        client._random_seed = spec.algorithm.seed
        return cls(spec, client)

    def snapshot(self) -> dict[str, Any]:
        """A small JSON-safe document of what the trial table does not hold: where generation stands.

        That is the generation strategy's current node and, per node, the state its generator left after its last
        call (Sobol: the seed and how many points it has drawn, duplicates it skipped included). Its size does not
        depend on the number of trials, so saving it at every step costs nothing.
        """
        from ax.storage.json_store.encoder import object_to_json

        strategy = self._client._generation_strategy
        nodes: dict[str, Any] = {}
        for run in reversed(strategy._generator_runs):
            name = run._generation_node_name
            if name and name not in nodes:
                nodes[name] = {
                    "generator_key": run._generator_key,
                    "state": object_to_json(run._generator_state_after_gen),
                }
                if len(nodes) == len(strategy._nodes):
                    break
        return {
            "format": SNAPSHOT_FORMAT,
            "name": self._client._experiment.name,
            "current_node": strategy.current_node_name,
            "nodes": nodes,
        }

    def _replay(self, trials: list[TrialOutcome], snapshot: Mapping[str, Any]) -> None:
        """Rebuild the Ax experiment from the trial table, in index order, with the data the live engine attached.

        The same end state as replaying Client calls trial by trial, but every result is attached in one Data
        object: Ax's per-call attach re-sorts the whole frame, which made a 1,000-trial restore quadratic (13 s).
        """
        import numpy as np
        import pandas as pd
        from ax.core.arm import Arm
        from ax.core.data import Data
        from ax.core.generator_run import GeneratorRun
        from ax.storage.json_store.decoder import object_from_json

        experiment = self._client._experiment
        strategy = self._client._generation_strategy
        strategy.experiment = experiment
        node_states: Mapping[str, Any] = snapshot.get("nodes") or {}
        last_of_node = {t.generator: t.index for t in trials}
        signatures = {name: metric.signature for name, metric in experiment.metrics.items()}
        rows: list[tuple[Any, ...]] = []
        ends: list[tuple[Any, TrialOutcome, bool]] = []
        with _quiet_ax():
            for outcome in trials:
                arm = Arm(parameters={k: v for k, v in outcome.parameters.items() if k not in self._fixed})
                while len(experiment.trials) < outcome.index:
                    # An index the table no longer has (a queued candidate dropped when the budget was lowered): an
                    # abandoned placeholder keeps every later trial at its own index.
                    placeholder = experiment.new_trial(generator_run=GeneratorRun(arms=[arm]))
                    placeholder.mark_abandoned(reason="dropped from the trial table")
                node = outcome.generator if outcome.generator in strategy.nodes_by_name else None
                state = None
                if node is not None and last_of_node.get(node) == outcome.index and node in node_states:
                    state = object_from_json(node_states[node]["state"])
                run = GeneratorRun(
                    arms=[arm],
                    generation_node_name=node,
                    generator_key=(node_states.get(node) or {}).get("generator_key") if node else None,
                    generator_state_after_gen=state,
                )
                trial = experiment.new_trial(generator_run=run)
                if node is not None:
                    strategy._generator_runs.append(run)
                if outcome.status == "abandoned":
                    trial.mark_abandoned(reason=outcome.reason[:1000] or None)
                    continue
                trial.mark_running(no_runner_required=True)
                data = self._data_of(outcome)
                if outcome.status == "completed" and len(data) < len(self._metrics):
                    # complete() refuses such a result; a table that holds one (edited by hand, or written by another
                    # version) must not keep the experiment from restoring: never fitted, never proposed again.
                    log.warning("trial %d lacks modelled metrics; restored as abandoned", outcome.index)
                    trial.mark_abandoned(reason="metrics missing")
                    continue
                if outcome.status in ("completed", "early_stopped"):
                    # The rows Client.complete_trial writes: no SEM (the model infers the noise), no progression.
                    rows += [
                        (outcome.index, trial.arm.name, name, signatures[name], value, np.nan, np.nan)
                        for name, value in data.items()
                    ]
                ends.append((trial, outcome, bool(data)))
            if rows:
                columns = ["trial_index", "arm_name", "metric_name", "metric_signature", "mean", "sem", "step"]
                experiment.attach_data(Data(df=pd.DataFrame(rows, columns=columns)))
            for trial, outcome, has_data in ends:
                if outcome.status == "completed":
                    trial.mark_completed()
                elif outcome.status == "failed":
                    trial.mark_failed(reason=outcome.reason[:1000])
                elif outcome.status == "early_stopped":
                    if has_data:
                        trial.mark_early_stopped()
                    else:  # nothing was logged: only kept from being proposed again, as early_stop() does
                        trial.mark_abandoned()
        current = snapshot.get("current_node")
        if current in strategy.nodes_by_name:
            strategy._curr = strategy.nodes_by_name[current]

    def _data_of(self, outcome: TrialOutcome) -> dict[str, float]:
        """The modelled metrics of a trial, as complete() and early_stop() give them to Ax."""
        return {name: float(outcome.metrics[name]) for name in self._metrics if name in outcome.metrics}

    def generate(self, count: int) -> list[Candidate]:
        """Up to `count` new candidates; trials not yet completed, failed or abandoned count as pending."""
        if count <= 0:
            return []
        from ax.exceptions.core import DataRequiredError
        from ax.exceptions.generation_strategy import MaxParallelismReachedException

        strategy = self._client._generation_strategy
        proposed: dict[int, Any] = {}
        with _quiet_ax():
            while len(proposed) < count:
                # Ax generates a batch across a node transition and, if the next node cannot generate yet (a model
                # without data), raises and loses what the first node made while still moving on to the next: with
                # initialTrials 1, the center point was lost and the search never started. So initialization
                # nodes (cheap) are asked one candidate at a time; the model node gets the rest as one batch.
                initializing = strategy._curr.name in INITIALIZATION_NODES
                wanted = 1 if initializing else count - len(proposed)
                try:
                    batch = self._client.get_next_trials(max_trials=wanted)
                except (DataRequiredError, MaxParallelismReachedException) as exc:
                    log.info("no %scandidate now: %s", "further " if proposed else "", exc)
                    break
                except ImportError as exc:  # Ax imports a model's packages only when it first fits that model
                    raise GenerationError(_missing_package_message(self.spec, exc)) from exc
                if not batch:
                    break
                proposed.update(batch)
            trials = self._client._experiment.trials
        candidates = []
        for index, parameters in sorted(proposed.items()):
            generator = trials[index].generator_runs[0]._generation_node_name or "unknown"
            full = {**dict(parameters), **self._fixed}
            candidates.append(Candidate(index, full, generator))  # type: ignore[arg-type]
        return candidates

    def attach(self, parameters: Mapping[str, Scalar], metrics: Mapping[str, float]) -> int:
        """Record a result obtained elsewhere (a warm start from earlier runs); returns its trial index.

        The model fits it like any other result, but Ax still runs its own initialization (center and
        Sobol trials count towards `initialTrials`; attached ones do not).
        """
        tunable = {name: value for name, value in parameters.items() if name not in self._fixed}
        with _quiet_ax():
            index = int(self._client.attach_trial(parameters=dict(tunable)))
        self.complete(index, metrics)
        return index

    def complete(self, index: int, metrics: Mapping[str, float]) -> None:
        data = {name: float(metrics[name]) for name in self._metrics if name in metrics}
        missing = [name for name in self._metrics if name not in metrics]
        if missing:
            raise ValueError(f"trial {index} lacks metrics {missing}")
        with _quiet_ax():
            self._client.complete_trial(trial_index=index, raw_data=data)

    def early_stop(self, index: int, projected: Mapping[str, float]) -> None:
        """Ax's EARLY_STOPPED status, with the favourable end of the trial's plausible finals as its data.

        Not the values measured at the stopping point: those understate what the configuration reaches (it stopped
        early), and a model fed them would rank the region below what finished trials there achieve. The optimistic
        projection is, by the stopping rule, still dominated or outside the thresholds, so the acquisition sees no
        gain there and does not propose the region again, without being told it is worse than the evidence says.
        Metrics not logged yet are left out (the model then has no data for them from this trial).
        """
        data = {name: float(projected[name]) for name in self._metrics if name in projected}
        with _quiet_ax():
            if not data:  # nothing to fit (Ax asks for abandoned then): the trial is only kept from being re-proposed
                self._client.mark_trial_abandoned(trial_index=index)
                return
            self._client.attach_data(trial_index=index, raw_data=data)
            self._client.mark_trial_early_stopped(trial_index=index)

    def fail(self, index: int, reason: str) -> None:
        with _quiet_ax():
            self._client.mark_trial_failed(trial_index=index, failed_reason=reason[:1000])

    def abandon(self, index: int) -> None:
        with _quiet_ax():
            self._client.mark_trial_abandoned(trial_index=index)

    def trial_statuses(self) -> dict[int, str]:
        """Ax's view of each trial (RUNNING, COMPLETED, FAILED, ABANDONED...), for consistency checks."""
        return {i: t.status.name for i, t in self._client._experiment.trials.items()}

    @property
    def generation_strategy_name(self) -> str:
        return str(self._client._generation_strategy.name)
