"""bench/generation.py runs both contenders (ours, Ax's defaults) at a small point and prints their ratio."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.engine


def test_generation_benchmark_compares_ours_with_ax_defaults() -> None:
    command = [sys.executable, str(ROOT / "bench" / "generation.py")]
    command += ["--observations", "10", "--batches", "2", "--objectives", "2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    row = re.search(
        r"^\| 2 \| 10 \| 2 \| 0 \| ([\d.]+) s \| [\d.]+ s \| [^|]+ \| (-?[\d.]+)% \| "
        r"([\d.]+) s \| [\d.]+ s \| [^|]+ \| (-?[\d.]+)% \| ([\d.]+)x \|$",
        result.stdout,
        re.M,
    )
    assert row is not None, result.stdout  # both contenders made a model step of 2 candidates, and the ratio is there
    ours, ours_gain, ax, ax_gain, ratio = (float(x) for x in row.groups())
    assert ours > 0 and ax > 0 and ratio == pytest.approx(ax / ours, rel=0.2, abs=0.1)  # from rounded seconds
    assert ours_gain >= 0 and ax_gain >= 0  # a batch can only add to the hypervolume of what was there
