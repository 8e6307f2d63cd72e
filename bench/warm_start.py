"""Warm start: does a search started from an earlier one's trials reach the cold search's result in fewer trials?

The case warm start exists for: a search space is immutable, so widening it means a new experiment.
An earlier experiment searched the digits MLP space with the hidden sizes capped at 48; the new one
searches the example's full space (up to 128). Both run our loop (ExperimentLoop + Engine, the
in-process backend) on bench/common.py's synthetic response (smooth, cheap: the model and the loop
are measured, not PyTorch), thresholds as examples/digits-mlp.yaml's.

For each seed: the earlier search (its own seed), then the new search cold and warm-started from the
earlier one's trials (spec.warmStart: the same selection rules as nasctl run and the operator). Reported:
the hypervolume after each trial of the new search (the true response, from its own trials only), the
cold run's final hypervolume, and the trial at which the warm run first reaches it (lower is better;
"never" if it does not within the budget).

    .venv/bin/python bench/warm_start.py             # 3 seeds, earlier search 24 trials, new search 30
    .venv/bin/python bench/warm_start.py --quick     # 1 seed, 8 and 8 trials
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "operator"))
from common import response  # noqa: E402

EXAMPLE = ROOT / "examples" / "digits-mlp.yaml"
NARROW_UPPER = 48  # the earlier search's cap on both hidden sizes


def spec_document(name: str, trials: int, seed: int, narrow: bool, warm_from: str | None = None) -> dict[str, Any]:
    document = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    document["metadata"]["name"] = name
    spec = document["spec"]
    if narrow:
        for parameter in spec["parameters"]:
            if parameter["name"].startswith("hidden_size"):
                parameter["upper"] = NARROW_UPPER
    spec["budget"] = {"maxTrials": trials, "parallelism": 2}
    spec["algorithm"] = {"name": "auto", "seed": seed, "initialTrials": 6}
    spec["metrics"] = {"source": "terminationMessage"}
    if warm_from is not None:
        spec["warmStart"] = {"experiments": [warm_from]}
    return dict(document)


def run(document: dict[str, Any], prior_states: list[tuple[str, Any]]) -> tuple[Any, int]:
    """One search on the in-process backend; returns its final state and how many prior trials it was given."""
    from nas_operator.backends.inprocess import InProcessBackend
    from nas_operator.core.backend import TrialLaunch
    from nas_operator.core.loop import ExperimentLoop, create_engine
    from nas_operator.core.prior_trials import select_prior_trials
    from nas_operator.core.state import LoopState, spec_fingerprint
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.worker import InlineEngineWorker
    from nas_operator.storage.store import FileStore

    spec = load_experiment(document, cluster=False).spec
    state = LoopState(document["metadata"]["name"], spec_fingerprint(spec))
    if prior_states:
        state.prior = [asdict(t) for t in select_prior_trials(spec, prior_states).trials]
    engine = create_engine(spec, state.experiment, state)

    def trial(launch: TrialLaunch) -> dict[str, float]:
        metrics = response(dict(launch.parameters))
        return {"val_acc": metrics["val_acc"], "num_params": metrics["num_params"]}

    backend = InProcessBackend(trial, max_workers=2)
    with tempfile.TemporaryDirectory(prefix="nas-bench-") as tmp:
        loop = ExperimentLoop(
            spec, state, InlineEngineWorker(engine), backend, FileStore(Path(tmp)), engine.snapshot(), lookahead=0
        )
        try:
            while not loop.finished:
                loop.step()
                time.sleep(0.001)
        finally:
            backend.shutdown()
    return state, len(state.prior)


def hypervolume_curve(document: dict[str, Any], state: Any) -> list[float]:
    """The hypervolume of the search's own trials after each one, in the order they finished."""
    from nas_operator.resource.spec_checks import load_experiment
    from nas_operator.search.pareto import hypervolume

    spec = load_experiment(document, cluster=False).spec
    done = sorted(state.by_status("succeeded"), key=lambda t: (t.finished_at or 0.0, t.index))
    return [hypervolume(spec, {t.index: t.metrics for t in done[: k + 1]}) for k in range(len(done))]


def first_reaching(curve: list[float], target: float) -> int | None:
    return next((k + 1 for k, value in enumerate(curve) if value >= target - 1e-9), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--earlier", type=int, default=24, help="trials of the earlier (narrow) search")
    parser.add_argument("--trials", type=int, default=30, help="trials of the new (wide) search")
    parser.add_argument("--quick", action="store_true", help="1 seed, 8 and 8 trials")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.earlier, args.trials = 1, 8, 8
    warnings.simplefilter("ignore")
    print(
        f"earlier search: hidden sizes up to {NARROW_UPPER}, {args.earlier} trials; new search: the example's space, "
        f"{args.trials} trials; seeds {list(range(args.seeds))}\n"
    )
    print("| seed | prior trials used | cold: final HV | warm: final HV | warm reaches cold's final HV at trial |")
    print("|---|---|---|---|---|")
    reached: list[int | None] = []
    ratios: list[float] = []
    for seed in range(args.seeds):
        earlier_doc = spec_document("earlier", args.earlier, seed + 100, narrow=True)
        earlier, _ = run(earlier_doc, [])
        cold_doc = spec_document("cold", args.trials, seed, narrow=False)
        cold, _ = run(cold_doc, [])
        warm_doc = spec_document("warm", args.trials, seed, narrow=False, warm_from="earlier")
        warm, used = run(warm_doc, [("earlier", earlier)])
        cold_curve, warm_curve = hypervolume_curve(cold_doc, cold), hypervolume_curve(warm_doc, warm)
        target = cold_curve[-1]
        at = first_reaching(warm_curve, target)
        reached.append(at)
        ratios.append(warm_curve[-1] / target if target else float("nan"))
        print(
            f"| {seed} | {used} | {target:.6g} | {warm_curve[-1]:.6g} | {at if at is not None else 'never'} "
            f"of {len(warm_curve)} |",
            flush=True,
        )
    hits = [r for r in reached if r is not None]
    mean = f"{statistics.fmean(hits):.1f}" if hits else "-"
    print(
        f"\nwarm reached the cold run's final hypervolume in {len(hits)} of {len(reached)} seeds, after {mean} "
        f"trials on average (cold: {args.trials}); warm final / cold final: " + ", ".join(f"{r:.3f}" for r in ratios)
    )


if __name__ == "__main__":
    main()
