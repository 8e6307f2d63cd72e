"""bench/state.py --quick runs, checks its restores, and shows our state document smaller and faster to save."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.engine


def test_state_benchmark_quick() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "state.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(
        r"^\| 40 \| (ours|Ax)[^|]*\| (\d+) ms \| (\d+) KiB \| (yes|no) \| ([\d.]+) s \|", result.stdout, re.M
    )
    assert [r[0] for r in rows] == ["ours", "Ax"], result.stdout
    (_, ours_ms, ours_kib, _, _), (_, ax_ms, ax_kib, _, _) = rows
    assert int(ours_kib) < int(ax_kib) and int(ours_ms) <= int(ax_ms)
