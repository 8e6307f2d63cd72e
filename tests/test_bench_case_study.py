"""bench/case_study.py --quick: SAASBO, the GP and Sobol through the engine at 24 parameters, with a tiny NUTS chain."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.engine


def test_the_case_study_benchmark_runs_every_contender_and_prints_regret_and_batch_times() -> None:
    command = [sys.executable, str(ROOT / "bench" / "case_study.py"), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for contender in ("SAASBO", "GP qLogNEHVI", "Sobol"):
        row = re.search(rf"^\| {contender} \| (.+) \| ([^|]+) \| (\d+) \| 1 \|$", result.stdout, re.M)
        assert row is not None, result.stdout
        rows[contender] = row
    regrets = [float(cell.split(" ± ")[0]) for cell in rows["SAASBO"].group(1).split(" | ")]
    assert len(regrets) == 4 and regrets == sorted(regrets, reverse=True)  # regret never grows with evaluations
    mean, worst = (float(x) for x in rows["SAASBO"].group(2).split(",")[:2])
    assert 0 < mean <= worst  # two model batches of 4 were timed
    assert rows["Sobol"].group(2).strip() == "-"  # no model
