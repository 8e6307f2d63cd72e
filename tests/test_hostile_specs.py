"""The hostile corpus (tests/hostile/) is refused by `nasctl validate` and by the operator's loader,
each document with its field named and never a traceback; the good examples still pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nas_operator.cli import main
from nas_operator.resource.policy import TrialPolicy
from nas_operator.resource.spec_checks import SpecError, load_spec

from .conftest import EXAMPLES
from .hostile import HostileCase, corpus

CASES = corpus()


def _named(output: str, expect: str) -> bool:
    return any(line.startswith(f"  {expect}") for line in output.splitlines())


def test_the_corpus_is_large_and_well_formed() -> None:
    assert len(CASES) >= 55
    assert len({case.name for case in CASES}) == len(CASES)
    assert all(case.expect and case.tries for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_validate_refuses_it_naming_the_field(case: HostileCase) -> None:
    result = CliRunner().invoke(main, ["validate", str(case.path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert _named(result.output, case.expect), f"{case.tries}: expected {case.expect} in\n{result.output}"


@pytest.mark.parametrize("case", [c for c in CASES if c.expect.startswith("spec.")], ids=lambda c: c.name)
def test_the_operator_loader_refuses_it_too(case: HostileCase) -> None:
    """The operator loads `spec` alone (load_spec) with its policy: the same field is named."""
    assert isinstance(case.document, dict)
    with pytest.raises(SpecError) as info:
        load_spec(case.document["spec"], policy=TrialPolicy())
    assert any(str(p).startswith(case.expect) for p in info.value.problems), info.value.problems


def test_validate_as_a_process_reports_every_file_without_a_traceback() -> None:
    """A real `nasctl validate` over the whole corpus at once: one line per file, exit 1, stderr clean."""
    paths = [str(case.path) for case in CASES]
    run = subprocess.run(
        [sys.executable, "-m", "nas_operator.cli", "validate", *paths],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stdout + run.stderr
    for case in CASES:
        assert f"{case.path}" in run.stdout
    assert " valid\n" not in run.stdout


@pytest.mark.parametrize(
    "text",
    [
        "a: [unclosed",  # not YAML
        "epochs: " + "9" * 5000,  # an integer Python refuses to convert
        "[" * 5000 + "]" * 5000,  # nesting deep enough to exhaust a recursive reader
        "just a string",
    ],
    ids=["not-yaml", "huge-integer-literal", "deep-nesting", "a-string"],
)
def test_unreadable_files_are_problems_not_tracebacks(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "nas_operator.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert str(path) in run.stdout


def test_the_examples_stay_valid_with_the_cluster_rules_and_the_default_policy() -> None:
    examples = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    result = CliRunner().invoke(main, ["validate", *examples])
    assert result.exit_code == 0, result.output
    assert result.output.count(": valid") == len(examples)


def test_local_mode_skips_cluster_needs_and_a_policy_file_grants_more(tmp_path: Path) -> None:
    no_claim = next(c for c in CASES if c.expect == "spec.metrics.claimName" and "without" in c.name)
    assert CliRunner().invoke(main, ["validate", "--local", str(no_claim.path)]).exit_code == 0
    bind = next(c for c in CASES if c.name.endswith("bind-mount-host-root"))
    values = tmp_path / "values.yaml"
    values.write_text("trialPolicy:\n  mountTypes: [volume, bind]\n")
    assert CliRunner().invoke(main, ["validate", "--policy", str(values), str(bind.path)]).exit_code == 0
    assert CliRunner().invoke(main, ["validate", str(bind.path)]).exit_code == 1
