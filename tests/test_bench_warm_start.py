"""bench/warm_start.py --quick: an earlier narrow search, then the wide one cold and warm-started from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.engine


def test_the_warm_start_benchmark_compares_a_warm_and_a_cold_search() -> None:
    command = [sys.executable, str(ROOT / "bench" / "warm_start.py"), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    row = re.search(r"^\| 0 \| (\d+) \| ([\d.e+]+) \| ([\d.e+]+) \| (\d+|never) of (\d+) \|$", result.stdout, re.M)
    assert row is not None, result.stdout
    used, cold, warm, at, trials = row.groups()
    assert int(used) == 8  # every trial of the narrow search lies inside the wide space
    assert float(cold) > 0 and float(warm) > 0 and int(trials) == 8
    assert at == "never" or 1 <= int(at) <= 8
    assert "warm reached the cold run's final hypervolume in" in result.stdout
