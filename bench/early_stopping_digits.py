"""Early stopping on the digits example with real trainings: none vs ours vs Ax's percentile rule.

Each run is `nasctl run`'s own code (`run_local`: real trial processes training the Lightning MLP, real TensorBoard
files read while they are written, the real Ax engine) on `examples/digits-mlp-early-stopping.yaml`, with its seed
set per run and two budgets:

- same trials: `maxTrials` trials for each arm; reported: training compute (trial-seconds, the sum of the trials'
  run times, and epochs trained) and the final hypervolume of the measured front (the example's thresholds are the
  reference point, so the figures compare across runs);
- equal compute: a `maxDuration` for each arm (wall time on the same machine, model fits included), then the final
  hypervolume each reached.

Arms: `none` (no earlyStopping block), `ours` (the example's rule), and `percentile`: Ax 1.3's own
`PercentileEarlyStoppingStrategy` on the first objective (val_acc), through Ax's Client: a shadow Ax experiment
holds every trial's curve as progression data (val_acc as the metric reduces it, the best so far) and
`Client.should_stop_trial_early` decides; a stopped trial is given to our engine with its last values, as Ax does.
Its min_progression and min_curves are the example's minProgression and minReferenceTrials, its percentile Ax's
default (50). Everything else (the loop, the kill, the engine) is the product's.

    .venv/bin/python bench/early_stopping_digits.py                       # 3 seeds x 3 arms x 2 budgets
    .venv/bin/python bench/early_stopping_digits.py --quick               # 1 seed, 6 trials, none and ours
    .venv/bin/python bench/early_stopping_digits.py --trials 20 --duration 150

Runs go one after the other (each trial already uses a core); each run's results stay under --keep DIR if given.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits-mlp-early-stopping.yaml"
ARMS = ("none", "ours", "percentile")


def spec_document(arm: str, seed: int, trials: int, duration: int | None) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    spec = document["spec"]
    spec["algorithm"]["seed"] = seed
    spec["budget"]["maxTrials"] = trials
    spec["algorithm"]["initialTrials"] = min(spec["algorithm"]["initialTrials"], trials)
    spec["budget"].pop("maxDuration", None)
    if duration is not None:
        spec["budget"]["maxDuration"] = f"{duration}s"
    if arm == "none":
        del spec["earlyStopping"]
    return document


# ------------------------------------------------------------------------------------------------ the child run


class AxPercentileJudge:
    """Ax's PercentileEarlyStoppingStrategy, asked through an Ax Client that shadows the experiment's curves.

    Called where the loop calls our rule (same signature); `current` is set to the index of the trial about to be
    judged, since the rule's inputs do not carry it.
    """

    def __init__(self, metric: str, min_progression: float, min_curves: int) -> None:
        from ax import Client, RangeParameterConfig
        from ax.early_stopping.strategies import PercentileEarlyStoppingStrategy

        self.metric = metric
        self.client = Client(random_seed=0)
        self.client.configure_experiment(
            name="shadow", parameters=[RangeParameterConfig(name="trial", bounds=(0.0, 1e6), parameter_type="float")]
        )
        self.client.configure_optimization(objective=metric)
        self.client.set_early_stopping_strategy(
            PercentileEarlyStoppingStrategy(min_progression=min_progression, min_curves=min_curves)
        )
        self.shadow: dict[int, int] = {}  # our trial index -> the shadow experiment's
        self.sent: dict[int, int] = {}  # points of each trial attached so far
        self.completed: set[int] = set()
        self.current = -1

    def _attach(self, index: int, progressions: Sequence[float], values: Sequence[float]) -> int:
        if index not in self.shadow:
            self.shadow[index] = int(self.client.attach_trial(parameters={"trial": float(index)}))
        shadow = self.shadow[index]
        for k in range(self.sent.get(index, 0), len(progressions)):
            self.client.attach_data(shadow, {self.metric: float(values[k])}, progression=int(progressions[k]))
        self.sent[index] = len(progressions)
        return shadow

    def __call__(self, spec: Any, rule: Any, trial: Any, references: Sequence[Any], measured: Any) -> Any:
        from nas_operator.search.stopping_rule import Verdict

        for reference in references:
            curve = reference.curves.metrics.get(self.metric)
            if curve is None or reference.index in self.completed:
                continue
            self.client.complete_trial(self._attach(reference.index, curve.progressions, curve.values))
            self.completed.add(reference.index)
        observed = {name: c.at(trial.progression) for name, c in trial.metrics.items()}
        observed = {k: v for k, v in observed.items() if v is not None and math.isfinite(v)}
        curve = trial.metrics.get(self.metric)
        if curve is None:
            return Verdict(False, False, trial.progression, "no curve yet")
        shadow = self._attach(self.current, curve.progressions, curve.values)
        stop = bool(self.client.should_stop_trial_early(shadow))
        if stop:
            self.client.mark_trial_early_stopped(shadow)
        reason = f"at epoch {trial.progression:g}, Ax's percentile rule on {self.metric}"
        return Verdict(stop, True, trial.progression, reason, projected=observed, observed=observed)


def child(arm: str, seed: int, trials: int, duration: int | None, results: Path) -> None:
    """One run, in its own process (the percentile arm replaces the loop's rule there only)."""
    from rich.console import Console

    import nas_operator.core.stopping as stopping_module
    from nas_operator.local.runner import run_local
    from nas_operator.resource.spec_checks import load_experiment

    document = spec_document(arm, seed, trials, duration)
    experiment = load_experiment(document)
    if arm == "percentile":
        rule = experiment.spec.early_stopping
        assert rule is not None
        judge = AxPercentileJudge(experiment.spec.objectives[0].metric, rule.min_progression, rule.min_reference_trials)
        original = stopping_module.TrialStopper.verdict

        def verdict(self: Any, trial: Any, state: Any) -> Any:
            judge.current = trial.index  # the judge is called for this trial next
            return original(self, trial, state)

        stopping_module.TrialStopper.verdict = verdict  # type: ignore[method-assign]
        stopping_module.judge = judge  # type: ignore[attr-defined]
    console = Console(file=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the run
    started = time.monotonic()
    run_local(experiment, results, fresh=True, console=console, show_progress=False)
    (results / "wall_seconds").write_text(f"{time.monotonic() - started:.1f}")


# ------------------------------------------------------------------------------------------------ the parent


def measure(results: Path) -> dict[str, float]:
    """Compute and outcome of one finished run, from its saved state."""
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.pareto import hypervolume
    from nas_operator.storage.store import FileStore

    stored = FileStore(results).load()
    assert stored is not None, results
    state = stored.state
    spec = load_experiment(yaml.safe_load((results / "experiment.yaml").read_text())).spec
    seconds = sum(t.duration or 0.0 for t in state.trials.values() if t.status != "queued")
    epochs = 0.0
    for trial in state.trials.values():
        if trial.status == "succeeded":
            epochs += float(trial.parameters["epochs"])
        elif trial.status == "earlyStopped":
            epochs += (trial.progression or 0.0) + 1.0  # Lightning's epoch tag counts from 0
    return {
        "trials": float(state.launched),
        "stopped": float(state.count("earlyStopped")),
        "trial_seconds": seconds,
        "epochs": epochs,
        "hypervolume": hypervolume(spec, state.results()),
        "wall": float((results / "wall_seconds").read_text()),
    }


def run_arm(
    arm: str, seed: int, trials: int, duration: int | None, keep: Path | None, reuse: bool = False
) -> dict[str, float]:
    base = keep or Path(tempfile.mkdtemp(prefix="es-digits-"))
    base.mkdir(parents=True, exist_ok=True)
    results = base / f"{arm}-seed{seed}-{'t' + str(trials) if duration is None else 'd' + str(duration)}"
    if reuse and (results / "wall_seconds").exists():
        return measure(results)  # a finished run of an earlier invocation (--keep DIR --reuse)
    command = [sys.executable, __file__, "--child", arm, str(seed), str(trials), str(duration or 0), str(results)]
    subprocess.run(command, check=True, cwd=base)
    return measure(results)


def mean_se(values: Sequence[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{statistics.mean(values):.4g} ± {statistics.stdev(values) / math.sqrt(len(values)):.2g}"


def table(title: str, rows: Mapping[str, list[dict[str, float]]], keys: Sequence[str]) -> str:
    lines = [f"### {title}", "", "| arm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for arm, runs in rows.items():
        lines.append(f"| {arm} | " + " | ".join(mean_se([r[k] for r in runs]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=5, metavar=("ARM", "SEED", "TRIALS", "DURATION", "RESULTS"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--duration", type=int, default=180, help="seconds of the equal-compute budget (0: skip)")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--quick", action="store_true", help="1 seed, 6 trials, none and ours, no equal compute")
    parser.add_argument("--keep", type=Path, help="keep every run's results directory here")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--reuse", action="store_true", help="with --keep: measure runs already finished there")
    args = parser.parse_args(argv)
    if args.child:
        arm, seed, trials, duration, results = args.child
        child(arm, int(seed), int(trials), int(duration) or None, Path(results))
        return 0
    if args.quick:
        args.seeds, args.trials, args.duration, args.arms = [0], 6, 0, ["none", "ours"]
    same: dict[str, list[dict[str, float]]] = {arm: [] for arm in args.arms}
    equal: dict[str, list[dict[str, float]]] = {arm: [] for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            same[arm].append(run_arm(arm, seed, args.trials, None, args.keep, args.reuse))
            print(f"seed {seed} {arm} ({args.trials} trials): {same[arm][-1]}", flush=True)
        if args.duration:
            for arm in args.arms:
                equal[arm].append(run_arm(arm, seed, 1000, args.duration, args.keep, args.reuse))
                print(f"seed {seed} {arm} ({args.duration}s): {equal[arm][-1]}", flush=True)
    keys = ["trials", "stopped", "trial_seconds", "epochs", "hypervolume", "wall"]
    print()
    print(table(f"Same trial budget ({args.trials} trials, seeds {args.seeds})", same, keys))
    if "none" in same:
        base = same["none"]
        for arm in [a for a in args.arms if a != "none"]:
            saved = [1 - r["trial_seconds"] / b["trial_seconds"] for r, b in zip(same[arm], base, strict=True)]
            epochs = [1 - r["epochs"] / b["epochs"] for r, b in zip(same[arm], base, strict=True)]
            print(
                f"\n{arm}: trial-seconds saved vs none {mean_se(saved)}, epochs saved {mean_se(epochs)}; "
                f"hypervolume {mean_se([r['hypervolume'] for r in same[arm]])} vs none "
                f"{mean_se([r['hypervolume'] for r in base])}"
            )
    if args.duration:
        print()
        print(table(f"Equal compute ({args.duration} s each, seeds {args.seeds})", equal, keys))
    if args.json:
        args.json.write_text(json.dumps({"same": same, "equal": equal}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
