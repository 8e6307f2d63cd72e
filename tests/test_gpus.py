"""The GPU inventory of `nasctl run`: where it comes from, how many trials it allows, who holds which device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from nas_operator.backends.gpus import (
    STANDIN_VARIABLE,
    GpuError,
    GpuInventory,
    GpuPool,
    concurrent_trials,
    detect_gpus,
    visible_devices,
)


def _standin_nvidia_smi(directory: Path, lines: list[str], code: int = 0) -> str:
    """A stand-in `nvidia-smi` on PATH that prints what the real one prints for `-L`; returns the new PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "nvidia-smi"
    body = "\n".join(f"echo '{line}'" for line in lines)
    script.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] || exit 9\n{body}\nexit {code}\n')
    script.chmod(0o755)
    return f"{directory}:{os.environ['PATH']}"


def test_the_standin_inventory_is_a_count_or_a_list_of_ids() -> None:
    assert detect_gpus({STANDIN_VARIABLE: "3"}).devices == ("0", "1", "2")
    listed = detect_gpus({STANDIN_VARIABLE: "2,5", "CUDA_VISIBLE_DEVICES": "7"})
    assert listed.devices == ("2", "5") and "stand-in" in listed.source
    assert detect_gpus({STANDIN_VARIABLE: "0"}).count == 0
    with pytest.raises(ValueError, match="listed twice"):
        detect_gpus({STANDIN_VARIABLE: "1,1"})


def test_nvidia_smi_is_asked_when_torch_sees_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine's torch sees no CUDA device (a CPU build or no driver): the inventory comes from nvidia-smi.
    pytest.importorskip("torch")
    import torch

    if torch.cuda.device_count():
        pytest.skip("torch sees GPUs here; the nvidia-smi fallback is not used")
    lines = [
        "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-aaaa)",
        "  MIG 1g.5gb Device 0: (UUID: MIG-bbbb)",
        "GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-cccc)",
    ]
    monkeypatch.setenv("PATH", _standin_nvidia_smi(tmp_path / "bin", lines))
    found = detect_gpus({})
    assert found.devices == ("0", "1") and found.source == "nvidia-smi -L"
    # nasctl started with CUDA_VISIBLE_DEVICES: trials get those entries, never a device it was not given
    narrowed = detect_gpus({"CUDA_VISIBLE_DEVICES": "1"})
    assert narrowed.devices == ("1",) and "CUDA_VISIBLE_DEVICES=1" in narrowed.source
    assert detect_gpus({"CUDA_VISIBLE_DEVICES": ""}).devices == ()
    monkeypatch.setenv("PATH", _standin_nvidia_smi(tmp_path / "broken", ["No devices were found"], code=6))
    assert detect_gpus({}).devices == ()


def test_parallelism_is_capped_by_the_gpus_and_too_many_per_trial_is_refused_by_field() -> None:
    four = GpuInventory(("0", "1", "2", "3"), "stand-in")
    assert concurrent_trials(four, per_trial=0, parallelism=8) == 8
    assert concurrent_trials(four, per_trial=1, parallelism=8) == 4
    assert concurrent_trials(four, per_trial=3, parallelism=8) == 1
    assert concurrent_trials(four, per_trial=2, parallelism=1) == 1
    with pytest.raises(
        GpuError, match=r"^spec\.trial\.resources\.gpu: each trial asks for 5 GPU\(s\), this machine has 4"
    ):
        concurrent_trials(four, per_trial=5, parallelism=1)
    with pytest.raises(GpuError, match=r"spec\.trial\.resources\.gpu"):
        concurrent_trials(GpuInventory((), "torch.cuda"), per_trial=1, parallelism=1)


def test_the_pool_hands_out_disjoint_devices_and_adopted_ones_stay_taken() -> None:
    pool = GpuPool(GpuInventory(("0", "1", "2"), "stand-in"))
    pool.claim("t0", ["1"])  # a trial a crashed nasctl left running on device 1
    assert pool.acquire("t1", 2) == ("0", "2")
    assert pool.acquire("t2", 1) is None  # nothing free: never shared
    assert pool.acquire("t1", 2) == ("0", "2")  # asking again gives the same devices
    pool.release("t0")
    assert pool.acquire("t2", 1) == ("1",)
    assert pool.acquire("t3", 0) == ()
    assert visible_devices(pool.acquire("t3", 0) or ()) == ""
    assert visible_devices(("0", "2")) == "0,2"
