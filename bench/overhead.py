"""Orchestration overhead: how long a freed trial slot stays empty, ours vs Ax's Orchestrator.

A fixed workload of trials that each sleep a known time (default 20 x 10 s, 4 at a time) over
the 6-parameter digits MLP space, two objectives from a synthetic response, real TensorBoard
event files, each trial a local process. The model's cost is real: Ax's default strategy
(center + Sobol, then qLogNEHVI) fits and optimizes on this machine. Contenders, in one run:

- ours: `nasctl run`'s loop (LocalBackend), candidates generated ahead on a background thread
  with running trials as pending;
- ours, generating on demand: the same loop with no look-ahead and generation inline, asked only
  when a slot frees (what a loop without look-ahead does; shows what generating ahead buys);
- Ax: `ax.Client.run_trials` (its Orchestrator with Ax's defaults) with TorchX's local_cwd
  scheduler and Ax's TensorboardMetric, the setup of Ax's multi-objective NAS tutorial.

Each trial records its own start and end (bench/sleep_trial.py), so idle time is what a GPU in
that slot would see: the k-th start after the first `parallelism` fills the slot freed by the
(k - parallelism)-th end. Reported: median and p90 idle per refill, the share of slot time
spent idle, and total wall time against the ideal ceil(N / parallelism) x seconds.

    .venv/bin/python bench/overhead.py                          # 20 x 10 s, parallelism 4 (about 4 minutes)
    .venv/bin/python bench/overhead.py --prior 40 --seconds 60  # a search 40 results in: costly generation
    .venv/bin/python bench/overhead.py --quick                  # 8 x 3 s, parallelism 2
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import response

ROOT = Path(__file__).resolve().parents[1]
TRIAL = ROOT / "bench" / "sleep_trial.py"
EXAMPLE = ROOT / "examples" / "digits-mlp.yaml"
PARAMETER_FLAGS = ("hidden_size_1", "hidden_size_2", "learning_rate", "epochs", "dropout", "batch_size")


@dataclass
class Outcome:
    name: str
    starts: list[float]
    ends: list[float]
    wall: float
    trials: int

    def idle(self, parallelism: int) -> list[float]:
        starts, ends = sorted(self.starts), sorted(self.ends)
        return [max(0.0, starts[k] - ends[k - parallelism]) for k in range(parallelism, len(starts))]


def experiment_document(trials: int, parallelism: int, seconds: float, seed: int, prior: int) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"]["name"] = "overhead"
    spec = document["spec"]
    spec["budget"] = {"maxTrials": trials, "parallelism": parallelism}
    # With prior results, those are the initialization and every workload trial is model-based.
    spec["algorithm"] = {"name": "auto", "initialTrials": prior or min(8, trials // 2), "seed": seed}
    spec["metrics"] = {
        "source": "tensorboard",
        "definitions": [{"name": "val_acc", "reduce": "last"}, {"name": "num_params", "reduce": "last"}],
    }
    args = [f"--seconds={seconds}", "--log-dir={log_dir}"]
    args += [f"--{name.replace('_', '-')}={{{name}}}" for name in PARAMETER_FLAGS]
    spec["trial"] = {"command": [sys.executable, str(TRIAL)], "args": args}
    return document


def objectives_only(parameters: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in response(parameters).items() if k in ("val_acc", "num_params")}


def run_ours(document: dict[str, Any], workdir: Path, background: bool, prior: int) -> Outcome:
    from nas_operator.core.state import LoopState, TrialRecord, spec_fingerprint, trial_name
    from nas_operator.local.runner import run_local
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.engine import Engine
    from nas_operator.storage.store import FileStore

    document = copy.deepcopy(document)
    document["spec"]["budget"]["maxTrials"] += prior
    experiment = load_experiment(document, cluster=False)
    results = workdir / ("ours-ahead" if background else "ours-inline")
    if prior:  # saved as an experiment this far along; run_local resumes it as `nasctl run` would
        engine = Engine.create(experiment.spec, experiment.metadata.name)
        state = LoopState(experiment.metadata.name, spec_fingerprint(experiment.spec))
        for candidate in engine.generate(prior):  # Ax's initialization: center + Sobol
            metrics = objectives_only(candidate.parameters)
            engine.complete(candidate.index, metrics)
            name = trial_name(experiment.metadata.name, candidate.index)
            state.trials[candidate.index] = TrialRecord(
                candidate.index, name, candidate.parameters, candidate.generator, status="succeeded", metrics=metrics
            )
        FileStore(results).save(state, engine.snapshot())
    started = time.time()
    run_local(
        experiment,
        results,
        fresh=not prior,
        console=Console(quiet=True),
        show_progress=False,
        background_generation=background,
        lookahead=None if background else 0,
        workdir=ROOT,
    )
    wall = time.time() - started
    times = [json.loads(p.read_text()) for p in (results / "tensorboard").glob("*/times.json")]
    name = "ours (generate ahead)" if background else "ours (generate on demand)"
    return Outcome(name, [t["start"] for t in times], [t["end"] for t in times], wall, len(times))


def run_ax_orchestrator(document: dict[str, Any], workdir: Path, trials: int, parallelism: int, prior: int) -> Outcome:
    """Ax's own loop: Client.run_trials -> Orchestrator, TorchXRunner on local_cwd, TensorboardMetric."""
    from ax import Client, RangeParameterConfig
    from ax.api.configs import ChoiceParameterConfig
    from ax.metrics.tensorboard import TensorboardMetric
    from ax.runners.torchx import TorchXRunner
    from tensorboard.backend.event_processing import plugin_event_multiplexer as event_multiplexer
    from torchx import specs

    log_root = workdir / "ax-logs"
    spec = document["spec"]
    seconds = float(spec["trial"]["args"][0].split("=", 1)[1])

    def trainer(
        log_path: str,
        hidden_size_1: int,
        hidden_size_2: int,
        learning_rate: float,
        epochs: int,
        dropout: float,
        batch_size: int,
        trial_idx: int = -1,
    ) -> specs.AppDef:
        args = [
            str(TRIAL),
            f"--seconds={seconds}",
            f"--log-dir={Path(log_path) / str(trial_idx)}",
            f"--hidden-size-1={hidden_size_1}",
            f"--hidden-size-2={hidden_size_2}",
            f"--learning-rate={learning_rate}",
            f"--epochs={epochs}",
            f"--dropout={dropout}",
            f"--batch-size={batch_size}",
        ]
        role = specs.Role(name="trial", image=str(ROOT), entrypoint=sys.executable, args=args)
        return specs.AppDef(name=f"trial-{trial_idx}", roles=[role])

    class TrialTensorboardMetric(TensorboardMetric):
        """The tutorial's metric: one event directory per trial index."""

        def _get_event_multiplexer_for_trial(self, trial: Any) -> Any:
            multiplexer = event_multiplexer.EventMultiplexer(max_reload_threads=4)
            multiplexer.AddRunsFromDirectory(str(log_root / str(trial.index)), None)
            multiplexer.Reload()
            return multiplexer

        @classmethod
        def is_available_while_running(cls) -> bool:
            return False

    parameters: list[Any] = []
    for p in spec["parameters"]:
        if p["type"] == "range":
            parameters.append(
                RangeParameterConfig(
                    name=p["name"],
                    parameter_type="int" if p.get("valueType") == "int" else "float",
                    bounds=(p["lower"], p["upper"]),
                    scaling="log" if p.get("logScale") else "linear",
                )
            )
        else:
            parameters.append(
                ChoiceParameterConfig(
                    name=p["name"], parameter_type="int", values=p["values"], is_ordered=p.get("ordered")
                )
            )
    thresholds = {o["metric"]: o["threshold"] for o in spec["objectives"]}
    client = Client(random_seed=spec["algorithm"]["seed"])
    client.configure_experiment(name="overhead", parameters=parameters)
    client.configure_optimization(
        objective="val_acc, -num_params",
        outcome_constraints=[f"val_acc >= {thresholds['val_acc']}", f"num_params <= {thresholds['num_params']}"],
    )
    client.configure_generation_strategy(
        initialization_budget=spec["algorithm"]["initialTrials"],
        initialization_random_seed=spec["algorithm"]["seed"],
    )
    client._set_runner(
        TorchXRunner(
            tracker_base=str(workdir / "ax-tracker"),
            component=trainer,
            component_const_params={"log_path": str(log_root)},
            orchestrator="local_cwd",
            cfg={},
        )
    )
    client._set_metrics(
        [
            TrialTensorboardMetric(name="val_acc", tag="val_acc", lower_is_better=False, smoothing=0.0),
            TrialTensorboardMetric(name="num_params", tag="num_params", lower_is_better=True, smoothing=0.0),
        ]
    )
    if prior:  # the same initialization trials as ours (same seed, same Sobol sequence)
        for index, prior_parameters in client.get_next_trials(max_trials=prior).items():
            client.complete_trial(trial_index=index, raw_data=objectives_only(dict(prior_parameters)))
    started = time.time()
    client.run_trials(max_trials=trials, parallelism=parallelism)
    wall = time.time() - started
    times = [json.loads(p.read_text()) for p in log_root.glob("*/times.json")]
    return Outcome("Ax Orchestrator + TorchX", [t["start"] for t in times], [t["end"] for t in times], wall, len(times))


def report(outcomes: list[Outcome], trials: int, parallelism: int, seconds: float, prior: int) -> str:
    ideal = math.ceil(trials / parallelism) * seconds
    lines = [
        f"workload: {trials} trials x {seconds:g} s, parallelism {parallelism}, after {prior} prior results; "
        f"ideal wall {ideal:.0f} s",
        "",
        "| contender | trials | idle per refill, median | p90 | max | idle share of slot time | wall | wall / ideal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for outcome in outcomes:
        idle = outcome.idle(parallelism)
        busy = sum(end - start for start, end in zip(sorted(outcome.starts), sorted(outcome.ends), strict=True))
        share = sum(idle) / (sum(idle) + busy) if busy else float("nan")
        p90 = statistics.quantiles(idle, n=10, method="inclusive")[-1] if len(idle) >= 2 else float("nan")
        lines.append(
            f"| {outcome.name} | {outcome.trials} | {statistics.median(idle) if idle else float('nan'):.2f} s "
            f"| {p90:.2f} s | {max(idle, default=float('nan')):.2f} s | {100 * share:.0f}% "
            f"| {outcome.wall:.0f} s | {outcome.wall / ideal:.2f} |"
        )
    ours = next((o for o in outcomes if o.name.startswith("ours (generate ahead)")), None)
    for outcome in outcomes:
        if ours is None or outcome is ours:
            continue
        mine, theirs = ours.idle(parallelism), outcome.idle(parallelism)
        lines.append(
            f"\nours vs {outcome.name}: idle per refill median {statistics.median(mine):.2f} s vs "
            f"{statistics.median(theirs):.2f} s, max {max(mine):.2f} s vs {max(theirs):.2f} s; "
            f"total idle {sum(mine):.0f} s vs {sum(theirs):.0f} s; wall {ours.wall:.0f} s vs {outcome.wall:.0f} s "
            f"(theirs / ours {outcome.wall / ours.wall:.2f})"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--parallelism", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prior",
        type=int,
        default=0,
        help="results (Ax's initialization trials) the search holds when the workload starts: "
        "every workload trial is then model-based, and generation grows costlier with them",
    )
    parser.add_argument("--quick", action="store_true", help="8 trials x 3 s, parallelism 2")
    parser.add_argument("--only", choices=("ahead", "inline", "ax"), action="append", help="run only these contenders")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.parallelism, args.seconds = 8, 2, 3.0
    document = experiment_document(args.trials, args.parallelism, args.seconds, args.seed, args.prior)
    prior = args.prior
    contenders: dict[str, Callable[[Path], Outcome]] = {
        "ahead": lambda w: run_ours(document, w, background=True, prior=prior),
        "inline": lambda w: run_ours(document, w, background=False, prior=prior),
        "ax": lambda w: run_ax_orchestrator(document, w, args.trials, args.parallelism, prior),
    }
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="nas-overhead-") as tmp:
        for key, run in contenders.items():
            if args.only and key not in args.only:
                continue
            print(f">> {key} ...", file=sys.stderr, flush=True)
            outcome = run(Path(tmp))
            print(f"   {outcome.trials} trials in {outcome.wall:.0f} s", file=sys.stderr, flush=True)
            outcomes.append(outcome)
    print(report(outcomes, args.trials, args.parallelism, args.seconds, args.prior))


if __name__ == "__main__":
    main()
