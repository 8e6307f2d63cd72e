"""bench/early_stopping_digits.py: its quick mode runs the digits example with and without early stopping."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "early_stopping_digits.py"

pytestmark = pytest.mark.e2e


def test_quick_mode_measures_both_arms_from_real_runs(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--keep", str(tmp_path / "runs"), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "### Same trial budget (6 trials, seeds [0])" in done.stdout
    assert "ours: trial-seconds saved vs none" in done.stdout
    figures = json.loads(out.read_text())
    none, ours = figures["same"]["none"][0], figures["same"]["ours"][0]
    for run in (none, ours):
        assert run["trials"] == 6 and run["trial_seconds"] > 0 and math.isfinite(run["hypervolume"])
    assert none["stopped"] == 0
    # the epochs of a run without stopping are exactly what its trials asked for
    import yaml

    from nas_operator.storage.store import FileStore

    stored = FileStore(tmp_path / "runs" / "none-seed0-t6").load()
    assert stored is not None
    assert none["epochs"] == sum(t.parameters["epochs"] for t in stored.state.trials.values())
    ours_spec = yaml.safe_load((tmp_path / "runs" / "ours-seed0-t6" / "experiment.yaml").read_text())["spec"]
    assert ours_spec["earlyStopping"]["progression"] == "epoch"
