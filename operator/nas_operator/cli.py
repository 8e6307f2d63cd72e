"""`nasctl`: validate experiments, print the CRD, run an experiment locally."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console

from nas_operator.spec import NASExperiment
from nas_operator.spec_checks import SpecError, load_experiment


def _read_documents(path: Path) -> list[dict[str, Any]]:
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as exc:
        raise click.ClickException(f"{path}: not valid YAML: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror}") from None
    if not documents:
        raise click.ClickException(f"{path}: no document")
    for document in documents:
        if not isinstance(document, dict):
            raise click.ClickException(f"{path}: a document is not a mapping")
    return documents


def load_experiment_file(path: Path) -> NASExperiment:
    """The single NASExperiment in a YAML file, or a ClickException listing every problem."""
    documents = [d for d in _read_documents(path) if d.get("kind") == "NASExperiment"]
    if len(documents) != 1:
        raise click.ClickException(f"{path}: expected one NASExperiment document, found {len(documents)}")
    try:
        return load_experiment(documents[0])
    except SpecError as exc:
        raise click.ClickException(f"{path} is not a valid NASExperiment:\n" + _indent(str(exc))) from None


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nas-operator")
def main() -> None:
    """Multi-objective neural architecture search, locally or on Kubernetes."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check NASExperiment files; print every problem with its field path and rule."""
    bad = 0
    for path in files:
        documents = _read_documents(path)
        for document in documents:
            name = (document.get("metadata") or {}).get("name", "?")
            try:
                load_experiment(document)
            except SpecError as exc:
                bad += 1
                click.echo(f"{path} ({name}): {len(exc.problems)} problem(s)")
                for problem in exc.problems:
                    click.echo(f"  {problem}")
            else:
                click.echo(f"{path} ({name}): valid")
    if bad:
        sys.exit(1)


@main.command()
def crd() -> None:
    """Print the NASExperiment CustomResourceDefinition (generated from the spec models)."""
    from nas_operator.crd import crd_yaml

    click.echo(crd_yaml(), nl=False)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--results",
    "results",
    type=click.Path(file_okay=False, path_type=Path),
    help="Results and state directory [default: nas-results/<experiment name>].",
)
@click.option("--fresh", is_flag=True, help="Discard saved state and start over.")
@click.option("--no-progress", is_flag=True, help="No live progress bar (events are still printed).")
@click.option("--lookahead", type=int, default=None, help="Candidates generated ahead [default: parallelism].")
def run(file: Path, results: Path | None, fresh: bool, no_progress: bool, lookahead: int | None) -> None:
    """Run (or resume) an experiment on this machine, each trial a local process."""
    from nas_operator.runner import ResumeError, pareto_table, run_local

    experiment = load_experiment_file(file)
    results_dir = results or Path("nas-results") / experiment.metadata.name
    console = Console()
    try:
        outcome = run_local(
            experiment, results_dir, fresh=fresh, console=console, show_progress=not no_progress, lookahead=lookahead
        )
    except ResumeError as exc:
        raise click.ClickException(str(exc)) from None
    state = outcome.state
    console.print(pareto_table(experiment, state))
    console.print(
        f"[bold]{state.phase}[/] ({state.reason}) {state.message}\n"
        f"Results in {outcome.results_dir}/: pareto.json, trials.csv, pareto.png, pareto.html; "
        f"TensorBoard: tensorboard --logdir {outcome.results_dir}/tensorboard"
    )
    if outcome.interrupted:
        sys.exit(130)
    if state.phase == "Failed":
        sys.exit(1)


if __name__ == "__main__":
    main()
