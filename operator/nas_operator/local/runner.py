"""`nasctl run`: an experiment on this machine, trials as local processes, with live progress.

The same loop as the operator, with a file store in the results directory. Running the same
command again resumes from the saved state; Ctrl-C (or SIGTERM) kills the running trials and
queues them again, so a resumed run launches exactly the trials the budget still allows.

One spec, two places: what a field cannot mean on one machine (an image, scheduling, a claim, limits) is named once
at the start with the reason, never silently dropped; GPUs are handed out per trial as the scheduler would
(backends/gpus.py), and a spec that asks more per trial than the machine has is refused before anything starts.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from nas_operator.backends.gpus import GpuError, GpuInventory, GpuPool, concurrent_trials, detect_gpus
from nas_operator.backends.local import LocalBackend
from nas_operator.core.full_training import full_training_status
from nas_operator.core.loop import Event, ExperimentLoop, create_engine, restore_engine
from nas_operator.core.prior_trials import select_prior_trials
from nas_operator.core.state import LoopState, spec_fingerprint
from nas_operator.core.status import pareto_front
from nas_operator.local.results import write_results
from nas_operator.resource.spec import NASExperiment, NASExperimentSpec
from nas_operator.resource.spec_checks import full_training_template
from nas_operator.search.engine import Engine
from nas_operator.search.pareto import hypervolume
from nas_operator.search.worker import InlineEngineWorker, ThreadedEngineWorker
from nas_operator.storage.store import FileStore

POLL_SECONDS = 0.25
# A local run gives up on an engine that raised this many times in a row with nothing left running (backoff 5, 10,
# 20, 40 s: about a minute and a quarter); the operator retries forever instead (its status says why it waits).
GENERATION_ATTEMPTS = 5


class ResumeError(RuntimeError):
    """The saved state cannot be continued with this spec."""


class MachineRefused(ResumeError):
    """The spec asks for more than this machine has (GPUs per trial); the message names the field.

    A ResumeError so that `nasctl run` reports it the same way: one line, exit status 1, nothing started.
    """


def locally_ignored(spec: NASExperimentSpec) -> list[tuple[str, str]]:
    """(field, why) for every field this spec sets that has no meaning on one machine."""
    trial, ignored = spec.trial, []
    if trial.image:
        ignored.append(("spec.trial.image", "trials run in this environment (a bare python is nasctl's own)"))
    if trial.node_selector:
        ignored.append(("spec.trial.nodeSelector", "one machine: there are no nodes to choose"))
    if trial.tolerations:
        ignored.append(("spec.trial.tolerations", "one machine: there are no taints to tolerate"))
    if trial.service_account_name:
        ignored.append(("spec.trial.serviceAccountName", "trials run as your user, with no Kubernetes identity"))
    if trial.mounts:
        ignored.append(("spec.trial.mounts", "trials see this machine's files directly; nothing is mounted"))
    if spec.metrics.claim_name:
        ignored.append(("spec.metrics.claimName", "TensorBoard logs go under the results directory"))
    limits = [name for name in ("cpu", "memory") if getattr(trial.resources, name)]
    if limits:
        ignored.append(
            (
                f"spec.trial.resources.{'/'.join(limits)}",
                "not enforced: trials are plain processes without cgroup limits (resources.gpu is honoured)",
            )
        )
    if "storage" in spec.model_fields_set and spec.storage.type != "file":
        ignored.append(("spec.storage", "the state is kept in state.json.gz in the results directory"))
    return ignored


def effective_parallelism(spec: NASExperimentSpec, inventory: GpuInventory) -> int:
    """spec.budget.parallelism, capped by the GPUs; MachineRefused when one trial asks more than there are."""
    try:
        return concurrent_trials(inventory, spec.trial.resources.gpu, spec.budget.parallelism)
    except GpuError as exc:
        raise MachineRefused(str(exc)) from None


def with_local_full_training(spec: NASExperimentSpec, inventory: GpuInventory) -> NASExperimentSpec:
    """spec.fullTraining's parallelism capped by this machine's GPUs, as the search's is (refused at the start)."""
    stage = spec.full_training
    if stage is None:
        return spec
    wanted = stage.parallelism or spec.budget.parallelism
    try:
        allowed = concurrent_trials(inventory, full_training_template(spec).resources.gpu, wanted)
    except GpuError as exc:
        raise MachineRefused(str(exc).replace("spec.trial.", "spec.fullTraining.trial.")) from None
    if allowed == wanted:
        return spec
    return spec.model_copy(update={"full_training": stage.model_copy(update={"parallelism": allowed})})


def _with_parallelism(spec: NASExperimentSpec, parallelism: int) -> NASExperimentSpec:
    if parallelism == spec.budget.parallelism:
        return spec
    return spec.model_copy(update={"budget": spec.budget.model_copy(update={"parallelism": parallelism})})


@dataclass
class RunOutcome:
    state: LoopState
    results_dir: Path
    interrupted: bool
    wall_seconds: float
    generation_seconds: list[float]


def open_experiment(
    experiment: NASExperiment,
    store: FileStore,
    fresh: bool,
    warm_start_dirs: Sequence[Path] = (),
    console: Console | None = None,
) -> tuple[LoopState, Engine, bool]:
    """The saved state and engine if there are any (and they match the spec), else new ones (warm-started)."""
    fingerprint = spec_fingerprint(experiment.spec)
    stored = None if fresh else store.load()
    if stored is None:
        state = LoopState(experiment=experiment.metadata.name, fingerprint=fingerprint)
        sources = warm_start_sources(experiment, store.directory, warm_start_dirs)
        if sources:
            selection = select_prior_trials(experiment.spec, sources)
            state.prior = [asdict(trial) for trial in selection.trials]
            if console is not None:
                console.print(f"[bold]Warm start:[/] {selection.summary()}")
        return state, create_engine(experiment.spec, experiment.metadata.name, state), False
    if stored.state.fingerprint != fingerprint:
        raise ResumeError(
            f"{store.path} was saved for a different search space, objectives or algorithm; "
            "restore the spec, choose another --results directory, or pass --fresh to start over"
        )
    if warm_start_dirs and console is not None:
        console.print("[yellow]--warm-start ignored:[/] a resumed experiment keeps the trials it started from")
    engine = restore_engine(experiment.spec, stored.engine, stored.state)
    return stored.state, engine, True


def warm_start_sources(
    experiment: NASExperiment, results_dir: Path, extra: Sequence[Path] = ()
) -> list[tuple[str, LoopState]]:
    """The saved states a local warm start reads: spec.warmStart's names beside this results directory, --warm-start.

    A source that holds no saved experiment is an error naming it: a warm start that silently started cold would
    cost the user the trials it was meant to save.
    """
    wanted: list[tuple[str, Path]] = []
    if experiment.spec.warm_start is not None:
        for i, name in enumerate(experiment.spec.warm_start.experiments):
            wanted.append((f"spec.warmStart.experiments[{i}]", results_dir.parent / name))
    wanted += [("--warm-start", Path(directory)) for directory in extra]
    sources = []
    for field, directory in wanted:
        if directory.resolve() == results_dir.resolve():
            raise ResumeError(f"{field}: {directory} is this experiment's own results directory")
        stored = FileStore(directory).load()
        if stored is None:
            raise ResumeError(
                f"{field}: no saved experiment in {directory} (nasctl run keeps each experiment in "
                "nas-results/<name>; give another directory with --warm-start)"
            )
        sources.append((stored.state.experiment or directory.name, stored.state))
    return sources


class _Interrupted(Exception):
    pass


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_local(
    experiment: NASExperiment,
    results_dir: Path,
    *,
    fresh: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    lookahead: int | None = None,
    background_generation: bool = True,
    workdir: Path | None = None,
    gpus: GpuInventory | None = None,
    warm_start_dirs: Sequence[Path] = (),
) -> RunOutcome:
    console = console or Console()
    spec = experiment.spec
    inventory = gpus if gpus is not None else detect_gpus()
    parallelism = effective_parallelism(spec, inventory)  # refuses before any state is read or written
    full_spec = with_local_full_training(spec, inventory)
    store = FileStore(results_dir)
    state, engine, resumed = open_experiment(experiment, store, fresh, warm_start_dirs, console)
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "experiment.yaml").write_text(
        yaml.safe_dump(experiment.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
    )
    if resumed:
        console.print(
            f"[bold]Resuming[/] {state.experiment} from {store.path}: {state.count('succeeded')} succeeded, "
            f"{state.count('failed')} failed, {state.count('queued')} queued"
        )
    for field, why in locally_ignored(spec):
        console.print(f"[dim]Ignored locally:[/] {field}: {why}")
    per_trial = spec.trial.resources.gpu
    if parallelism < spec.budget.parallelism:
        console.print(
            f"[yellow]Parallelism {parallelism}[/], not spec.budget.parallelism={spec.budget.parallelism}: each trial "
            f"asks for {per_trial} GPU(s) (spec.trial.resources.gpu) and this machine has {inventory.count} "
            f"({inventory.source})"
        )
    elif per_trial:
        console.print(f"[dim]GPUs:[/] {per_trial} per trial of {inventory.count} ({inventory.source})")
    backend = LocalBackend(
        results_dir,
        workdir=workdir,
        termination_messages=spec.metrics.source == "terminationMessage",
        gpus=GpuPool(inventory),
    )
    backend.reserve_recorded(state.trials.values())  # trials a crashed run left running keep their devices
    snapshot = engine.snapshot()
    worker = ThreadedEngineWorker(engine) if background_generation else InlineEngineWorker(engine)

    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[name]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_progress,
        transient=False,
    )

    def on_event(event: Event) -> None:
        style = "yellow" if event.warning else "dim"
        prefix = f"{event.trial}: " if event.trial else ""
        message = event.message if len(event.message) < 600 else event.message[:600] + "..."
        console.print(f"[{style}]{time.strftime('%H:%M:%S')} {event.reason:<15}[/] {prefix}{message}")

    loop_spec = _with_parallelism(full_spec, parallelism)
    loop = ExperimentLoop(
        loop_spec,
        state,
        worker,
        backend,
        store,
        snapshot,
        on_event=on_event,
        lookahead=lookahead,
        max_generation_failures=GENERATION_ATTEMPTS,
    )
    start = time.monotonic()
    interrupted = False
    task = progress.add_task("search", total=spec.budget.max_trials, name=state.experiment, detail="")
    try:
        with progress, _sigterm_as_interrupt():
            while not loop.finished:
                loop.step()
                done = state.count("succeeded", "failed", "stopped", "earlyStopped")
                progress.update(task, completed=done, detail=_detail(loop))
                if not loop.finished:
                    time.sleep(POLL_SECONDS)
            # The last results were posted to the engine; let it apply them so the saved
            # snapshot agrees with the trial table (no generation is pending at this point).
            worker.close()
            if isinstance(worker, ThreadedEngineWorker):
                worker.join(timeout=300)
            loop.step()
    except (KeyboardInterrupt, _Interrupted):
        interrupted = True
        loop.interrupt()
        console.print(f"[yellow]Interrupted.[/] State saved in {store.path}; run the same command again to resume.")
    finally:
        worker.close()
    write_results(spec, state, results_dir)
    return RunOutcome(state, results_dir, interrupted, time.monotonic() - start, loop.generation_seconds)


def _detail(loop: ExperimentLoop) -> str:
    state = loop.state
    parts = [
        f"running {state.count('running', 'launching')}",
        f"ok {state.count('succeeded')}",
        f"failed {state.count('failed')}",
    ]
    if state.count("earlyStopped"):
        parts.append(f"stopped early {state.count('earlyStopped')}")
    results = state.results()
    if results:
        parts.append(f"front {len(pareto_front(loop.spec, state))}")
        parts.append(f"HV {hypervolume(loop.spec, results):.4g}")
    if loop.worker.generating:
        parts.append("generating…")
    return " · ".join(parts)


def pareto_table(experiment: NASExperiment, state: LoopState) -> Table:
    """The front, best first objective first, compact enough for an 80-column terminal."""
    spec = experiment.spec
    front = pareto_front(spec, state)
    if len(spec.objectives) == 1:  # one objective: the front is the best trial (ties: all of them)
        title = f"Best trial of {state.experiment}" if front else f"{state.experiment}: no trial within the threshold"
    else:
        hv = hypervolume(spec, state.results())
        title = f"Pareto front of {state.experiment}: {len(front)} trials, hypervolume {hv:.5g}"
    table = Table(title=title)
    table.add_column("trial", no_wrap=True)
    for objective in spec.objectives:
        arrow = "↑" if objective.goal == "maximize" else "↓"
        table.add_column(f"{objective.metric} {arrow}", justify="right", no_wrap=True)
    tunable = [p.name for p in spec.parameters if p.type != "fixed"]
    table.add_column("parameters")
    for point in front:
        cells = [f"t{point.index}"]
        cells += [f"{point.metrics[o.metric]:.5g}" for o in spec.objectives]
        cells.append(" ".join(f"{name}={_short(point.parameters.get(name))}" for name in tunable))
        table.add_row(*cells)
    return table


def full_training_table(experiment: NASExperiment, state: LoopState) -> Table:
    """Stage 2: each candidate's proxy and full-training values, the final front marked, Kendall's tau."""
    spec = experiment.spec
    status = full_training_status(spec, state)
    taus = status.rank_correlation if status is not None else {}
    final = {p.index for p in status.pareto_front} if status is not None else set()
    if status is not None and status.best_trial is not None:
        final = {status.best_trial.index}
    shown = ", ".join(f"{metric} {tau:.2f}" for metric, tau in taus.items()) or "too few pairs"
    table = Table(title=f"Full training of {state.experiment}: Kendall's tau proxy/full {shown}")
    table.add_column("trial", no_wrap=True)
    table.add_column("status")
    for objective in spec.objectives:
        arrow = "↑" if objective.goal == "maximize" else "↓"
        table.add_column(f"{objective.metric} {arrow} proxy → full", justify="right", no_wrap=True)
    table.add_column("final front")
    for index, full in sorted(state.full_trials.items()):
        proxy = state.trials[index].metrics if index in state.trials else {}
        cells = [f"f{index}", full.status]
        for objective in spec.objectives:
            before, after = proxy.get(objective.metric), full.metrics.get(objective.metric)
            cells.append(
                ("-" if before is None else f"{before:.4g}") + " → " + ("-" if after is None else f"{after:.4g}")
            )
        cells.append("★" if index in final else "")
        table.add_row(*cells)
    return table


def _short(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
