"""The GPUs of this machine, and which trial holds which, for `nasctl run`.

On a cluster the scheduler gives each trial pod the `nvidia.com/gpu` count it asks for, and the device plugin hides
every other GPU from it. Locally nothing does that: without this module parallel trials all see every GPU and
contend for the first. Here each trial gets exactly `spec.trial.resources.gpu` devices of its own through
`CUDA_VISIBLE_DEVICES` (an empty value for a trial that asks none, so it cannot touch one by accident), and the
runner never starts more trials at once than the devices allow.

Devices are named by the entries nasctl itself may use: when nasctl runs with `CUDA_VISIBLE_DEVICES` already set
(a shared workstation, a batch slot), the trials get subsets of those entries, never physical indices the user did
not hand over.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

STANDIN_VARIABLE = "NAS_STANDIN_GPUS"
"""A stand-in inventory for tests and machines without drivers: a count ("4") or device ids ("0,1,5"). The trials
then get these ids in CUDA_VISIBLE_DEVICES, whether or not such devices exist; nothing else is faked."""

NVIDIA_SMI_TIMEOUT_SECONDS = 10.0
_SMI_LINE = re.compile(r"^GPU (\d+):")


class GpuError(ValueError):
    """The spec asks for GPUs this machine cannot give; the message names the field."""


@dataclass(frozen=True)
class GpuInventory:
    """The device ids trials may be given, and where that list came from (shown to the user)."""

    devices: tuple[str, ...]
    source: str

    @property
    def count(self) -> int:
        return len(self.devices)


def _standin(value: str) -> tuple[str, ...]:
    value = value.strip()
    if value.isdigit():
        return tuple(str(i) for i in range(int(value)))
    ids = tuple(part.strip() for part in value.split(",") if part.strip())
    if len(set(ids)) != len(ids):
        raise ValueError(f"{STANDIN_VARIABLE}={value!r}: a device id is listed twice")
    return ids


def _torch_count() -> int:
    """CUDA devices torch sees (it honours CUDA_VISIBLE_DEVICES); 0 without a CUDA build, driver or device."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:  # a broken driver install must not stop a CPU-only run
        return 0


def _nvidia_smi_count() -> int:
    """Physical GPUs NVIDIA's own tool lists (`nvidia-smi -L`: one "GPU n: ..." line each); 0 when it is absent."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if listed.returncode != 0:
        return 0
    return sum(1 for line in listed.stdout.splitlines() if _SMI_LINE.match(line.strip()))


def detect_gpus(environ: dict[str, str] | None = None) -> GpuInventory:
    """The stand-in inventory if one is set, else what torch sees, else what `nvidia-smi -L` lists.

    nvidia-smi ignores CUDA_VISIBLE_DEVICES, so when nasctl's own environment sets it, the inventory is its entries
    (at most as many as exist): a trial is never given a device its caller kept away from nasctl.
    """
    env = os.environ if environ is None else environ
    standin = env.get(STANDIN_VARIABLE)
    if standin is not None:
        return GpuInventory(_standin(standin), f"stand-in inventory {STANDIN_VARIABLE}={standin}")
    count, source = _torch_count(), "torch.cuda"
    if count == 0:
        count, source = _nvidia_smi_count(), "nvidia-smi -L"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        entries = tuple(part.strip() for part in visible.split(",") if part.strip())
        return GpuInventory(entries[:count], f"{source}, within CUDA_VISIBLE_DEVICES={visible}")
    return GpuInventory(tuple(str(i) for i in range(count)), source)


def concurrent_trials(inventory: GpuInventory, per_trial: int, parallelism: int) -> int:
    """How many trials may run at once: the spec's parallelism, capped by the devices when trials ask for some.

    Raises GpuError naming spec.trial.resources.gpu when a single trial asks more than the machine has.
    """
    if per_trial <= 0:
        return parallelism
    if per_trial > inventory.count:
        raise GpuError(
            f"spec.trial.resources.gpu: each trial asks for {per_trial} GPU(s), this machine has {inventory.count} "
            f"({inventory.source})"
        )
    return min(parallelism, inventory.count // per_trial)


class GpuPool:
    """Which trial holds which devices. Handed out lowest id first; released when the trial's process is done.

    A trial adopted after a restart of nasctl claims the devices recorded when it was started, before anything new
    is handed out, so a resumed run never gives a running trial's GPU to another.
    """

    def __init__(self, inventory: GpuInventory) -> None:
        self.inventory = inventory
        self._held: dict[str, tuple[str, ...]] = {}

    def free(self) -> list[str]:
        taken = {device for devices in self._held.values() for device in devices}
        return [device for device in self.inventory.devices if device not in taken]

    def held(self, trial: str) -> tuple[str, ...] | None:
        return self._held.get(trial)

    def acquire(self, trial: str, count: int) -> tuple[str, ...] | None:
        """`count` free devices for `trial` (the ones it holds already, if any), or None when too few are free."""
        if trial in self._held:
            return self._held[trial]
        free = self.free()
        if len(free) < count:
            return None
        self._held[trial] = tuple(free[:count])
        return self._held[trial]

    def claim(self, trial: str, devices: Iterable[str]) -> None:
        """Record devices a trial was started with (adoption); they are held even if they overlap or vanished."""
        self._held[trial] = tuple(devices)

    def release(self, trial: str) -> None:
        self._held.pop(trial, None)


def visible_devices(devices: Iterable[str]) -> str:
    """The CUDA_VISIBLE_DEVICES value for a trial: its devices, or "" (no GPU at all) for a trial that asks none."""
    return ",".join(devices)
