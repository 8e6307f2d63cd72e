"""The container images, tested as far as a machine without a Docker engine allows.

What is checked: hadolint finds both Dockerfiles clean; they install with the same command and
lock as CI's setup (scripts/install-env); the CPU variant only swaps the torch wheel; the final
stages run as a numeric non-root user from a pinned base; and each image's entrypoint runs
here, in the environment the same command built. (The operator's entrypoint runs for real in
tests/test_helm.py, with the chart's arguments.)
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

DOCKERFILES = {"operator": ROOT / "Dockerfile", "trainer": ROOT / "trainer-image" / "Dockerfile"}
VENV_BIN = Path(sys.executable).parent


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = dockerfile.read_text().replace("\\\n", " ")
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def entrypoint(dockerfile: Path, with_cmd: bool = True) -> list[str]:
    """What `docker run IMAGE` runs; without CMD, what a pod with `args` runs before them."""
    steps = dict(final_stage(dockerfile))
    command = list(json.loads(steps["ENTRYPOINT"]))
    return command + list(json.loads(steps.get("CMD", "[]"))) if with_cmd else command


@pytest.mark.parametrize("image", DOCKERFILES)
def test_hadolint_finds_the_dockerfile_clean(image: str) -> None:
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), str(DOCKERFILES[image])], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_a_real_check(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /src && pip install .\n")
    result = subprocess.run([str(VENV_BIN / "hadolint"), str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout  # latest tag


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_image_installs_with_the_command_ci_runs(image: str) -> None:
    steps = instructions(DOCKERFILES[image])
    runs = [args for keyword, args in steps if keyword == "RUN"]
    installs = [args for args in runs if "scripts/install-env" in args]
    assert len(installs) == 1, runs
    assert not [args for args in runs if "pip install" in args], "a second install path beside scripts/install-env"
    copied = " ".join(args for keyword, args in steps if keyword == "COPY")
    assert "requirements.lock" in copied and "scripts/install-env" in copied
    setup = (ROOT / "scripts" / "setup").read_text()
    assert "scripts/install-env .venv/bin/python" in setup  # the same command builds CI's environment


@pytest.mark.parametrize("image", DOCKERFILES)
def test_the_final_stage_runs_as_a_non_root_user_from_a_pinned_base(image: str) -> None:
    steps = instructions(DOCKERFILES[image])
    base = next(args for keyword, args in steps if keyword == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert base.startswith("PYTHON_IMAGE=python:3.11."), base
    tag = base.split(":", 1)[1]
    assert tag.split("-")[0].count(".") == 2, f"pin the patch release, not {tag}"
    stage = final_stage(DOCKERFILES[image])
    users = [args for keyword, args in stage if keyword == "USER"]
    assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) >= 1000, users


def _install_env(*args: str) -> list[str]:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-env"), "/usr/bin/python3", *args, "--dry-run"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.splitlines()


def test_the_cpu_variant_differs_only_in_the_torch_wheel() -> None:
    def requirements(lines: list[str]) -> set[str]:
        return {line for line in lines if "==" in line and not line.startswith(("#", "/"))}

    lock = requirements((ROOT / "requirements.lock").read_text().splitlines())
    cuda = requirements(_install_env("--torch", "cuda"))
    cpu = requirements(_install_env("--torch", "cpu"))
    assert cuda == lock
    torch_version = next(line for line in lock if line.startswith("torch=="))
    assert f"{torch_version}+cpu" in cpu
    dropped = lock - cpu
    assert torch_version in dropped and len(dropped) > 5
    assert all(line.startswith(("nvidia-", "triton==", "torch==")) for line in dropped), dropped
    assert cpu - lock == {f"{torch_version}+cpu"}
    commands = [line for line in _install_env("--torch", "cpu") if line.startswith("/usr/bin/python3")]
    assert all("https://download.pytorch.org/whl/cpu" in line and "--no-deps" in line for line in commands)


def test_trainer_entrypoint_runs() -> None:
    command = entrypoint(DOCKERFILES["trainer"])
    assert command[:3] == ["python", "-m", "nas_trainer.mlp"]
    result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--hidden-size-1" in result.stdout, result.stderr


def test_operator_entrypoint_names_the_handlers_module_and_liveness_port() -> None:
    command = entrypoint(DOCKERFILES["operator"])
    assert command[:4] == ["kopf", "run", "-m", "nas_operator.cluster.handlers"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in command  # `docker run IMAGE` serves Kopf's probe
    result = subprocess.run(
        [str(VENV_BIN / "kopf"), *command[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and "--liveness" in result.stdout, shlex.join(command) + result.stderr
