"""`nasctl`: validate experiments, print the CRD, run an experiment locally."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml
from rich.console import Console

from nas_operator.resource.policy import TrialPolicy
from nas_operator.resource.spec import NASExperiment
from nas_operator.resource.spec_checks import SpecError, load_experiment

if TYPE_CHECKING:
    from nas_operator.storage.store import StoredState


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


def load_experiment_file(path: Path, *, cluster: bool = False, policy: TrialPolicy | None = None) -> NASExperiment:
    """The single NASExperiment in a YAML file, or a ClickException listing every problem.

    The default checks what a local run needs (`nasctl run`); pass cluster=True and the
    trial policy for what the operator will check.
    """
    try:
        documents = [d for d in _read_documents(path) if d.get("kind") == "NASExperiment"]
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more digits than Python converts
        raise click.ClickException(f"{path}: cannot be read: {exc}") from None
    if len(documents) != 1:
        raise click.ClickException(f"{path}: expected one NASExperiment document, found {len(documents)}")
    try:
        return load_experiment(documents[0], cluster=cluster, policy=policy)
    except SpecError as exc:
        raise click.ClickException(f"{path} is not a valid NASExperiment:\n" + _indent(str(exc))) from None


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nas-operator")
def main() -> None:
    """Multi-objective neural architecture search, locally or on Kubernetes."""


def _validation_documents(path: Path) -> tuple[list[Any], str | None]:
    """A file's YAML documents (of any type: the checks name what is wrong), or why it cannot be read."""
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None], None
    except yaml.YAMLError as exc:
        return [], f"not valid YAML: {exc}"
    except OSError as exc:
        return [], str(exc.strerror)
    except UnicodeDecodeError:
        return [], "not UTF-8 text"
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more digits than Python converts
        return [], f"cannot be read: {str(exc)[:200]}"


def _document_name(document: Any) -> str:
    metadata = document.get("metadata") if isinstance(document, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name[:80] if isinstance(name, str) else "?"


policy_option = click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The chart's values file whose trialPolicy applies [default: NAS_TRIAL_* variables, as the operator reads "
    "them, else the chart's default policy].",
)


def _trial_policy(policy_file: Path | None) -> TrialPolicy:
    """The trial policy the operator would apply: a values file's `trialPolicy`, else the NAS_TRIAL_* variables."""
    try:
        if policy_file is None:
            return TrialPolicy.from_env()
        values, unread = _validation_documents(policy_file)
        if unread:
            raise ValueError(unread)
        return TrialPolicy.from_values(values[0] if values else {})
    except ValueError as exc:
        raise click.ClickException(f"{policy_file or 'NAS_TRIAL_* variables'}: {exc}") from None


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@policy_option
@click.option("--local", is_flag=True, help="Check only what `nasctl run` needs (no image, claim or trial policy).")
def validate(files: tuple[Path, ...], policy_file: Path | None, local: bool) -> None:
    """Check NASExperiment files; print every problem with its field path and rule.

    By default a spec is checked as the operator will check it: the cluster's needs (an image,
    a metrics claim for TensorBoard) and the trial policy.
    """
    policy = None if local else _trial_policy(policy_file)
    bad = 0
    for path in files:
        documents, unreadable = _validation_documents(path)
        if unreadable or not documents:
            bad += 1
            click.echo(f"{path}: {unreadable or 'no document'}")
            continue
        for document in documents:
            name = _document_name(document)
            try:
                load_experiment(document, policy=policy, cluster=not local)
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
    from nas_operator.resource.crd import crd_yaml

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
@click.option(
    "--warm-start",
    "warm_start",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A results directory of an earlier run whose trials the model starts from (repeatable; read when the "
    "experiment starts, beside spec.warmStart's).",
)
def run(
    file: Path,
    results: Path | None,
    fresh: bool,
    no_progress: bool,
    lookahead: int | None,
    warm_start: tuple[Path, ...],
) -> None:
    """Run (or resume) an experiment on this machine, each trial a local process."""
    from nas_operator.local.runner import ResumeError, full_training_table, pareto_table, run_local

    experiment = load_experiment_file(file)
    results_dir = results or Path("nas-results") / experiment.metadata.name
    console = Console()
    try:
        outcome = run_local(
            experiment,
            results_dir,
            fresh=fresh,
            console=console,
            show_progress=not no_progress,
            lookahead=lookahead,
            warm_start_dirs=warm_start,
        )
    except ResumeError as exc:
        raise click.ClickException(str(exc)) from None
    state = outcome.state
    console.print(pareto_table(experiment, state))
    if state.full_trials:
        console.print(full_training_table(experiment, state))
    console.print(
        f"[bold]{state.phase}[/] ({state.reason}) {state.message}\n"
        f"Results in {outcome.results_dir}/: pareto.json, trials.csv, "
        + ("best.png, best.html; " if len(experiment.spec.objectives) == 1 else "pareto.png, pareto.html; ")
        + f"TensorBoard: tensorboard --logdir {outcome.results_dir}/tensorboard"
    )
    if outcome.interrupted:
        sys.exit(130)
    if state.phase == "Failed":
        sys.exit(1)


# ------------------------------------------------------------------------------------ cluster


def _kube(context: str | None) -> Any:
    from kubernetes import client, config

    loader: Any = config  # untyped in the client's stubs
    try:
        loader.load_kube_config(context=context)
    except config.ConfigException:
        loader.load_incluster_config()
    return client.ApiClient()


def _current_namespace(namespace: str | None) -> str:
    if namespace:
        return namespace
    from kubernetes import config

    loader: Any = config  # untyped in the client's stubs
    try:
        _, active = loader.list_kube_config_contexts()
        return str(active["context"].get("namespace") or "default")
    except Exception:
        return "default"


def _get_experiment(api: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from nas_operator.resource.spec import API_GROUP, API_VERSION, PLURAL

    custom: Any = client.CustomObjectsApi(api)
    try:
        obj: dict[str, Any] = custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        raise click.ClickException(f"NASExperiment {namespace}/{name}: {exc.reason}") from None
    return obj


def _stored_state(api: Any, namespace: str, obj: dict[str, Any]) -> tuple[NASExperiment, StoredState | None, str]:
    """The experiment as stored on the cluster, its saved state (None before the first save) and where that is.

    Read from the store the spec names (the ConfigMap, or the SQL database of an opted-in Secret), opened by the
    operator's own rules (storage/open_store.py); a problem becomes a ClickException naming the field or the store.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from nas_operator.resource.spec import API_GROUP, API_VERSION, KIND
    from nas_operator.storage.open_store import open_store
    from nas_operator.storage.store import ForeignState

    name, uid = obj["metadata"]["name"], str(obj["metadata"].get("uid") or "")
    # Read as stored: an experiment created before a newer rule still shows its results.
    try:
        experiment = load_experiment({k: obj[k] for k in ("apiVersion", "kind", "metadata", "spec")}, cluster=False)
    except SpecError as exc:
        raise click.ClickException(f"{namespace}/{name} cannot be read:\n" + _indent(str(exc))) from None
    # The experiment's identity, so a state left by an earlier object of this name is refused as the operator does.
    owner = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": KIND, "name": name, "uid": uid}
    spec = experiment.spec
    where = (
        f"SQL store (Secret {spec.storage.secret_ref.name})"
        if spec.storage.type == "sql" and spec.storage.secret_ref is not None
        else f"ConfigMap {namespace}/{name}-nas-state"
    )
    try:
        store = open_store(client.CoreV1Api(api), namespace, name, spec, owner_reference=owner, uid=uid)
        return experiment, store.load(), where
    except SpecError as exc:
        raise click.ClickException(
            f"{namespace}/{name}: the state store cannot be opened:\n" + _indent(str(exc))
        ) from None
    except ApiException as exc:
        raise click.ClickException(f"{namespace}/{name}: reading the {where}: {exc.status} {exc.reason}") from None
    except ForeignState as exc:
        raise click.ClickException(f"{namespace}/{name}: {exc}") from None
    except Exception as exc:  # a database that cannot be reached from here, a document that does not decode
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise click.ClickException(f"{namespace}/{name}: reading the {where}: {type(exc).__name__}: {reason}") from None


namespace_option = click.option("-n", "--namespace", default=None, help="Namespace [default: the kubeconfig's].")
context_option = click.option("--context", default=None, help="kubeconfig context.")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@namespace_option
@context_option
def apply(file: Path, namespace: str | None, context: str | None) -> None:
    """Validate a NASExperiment file, then create it on the cluster."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    from nas_operator.resource.spec import API_GROUP, API_VERSION, PLURAL

    experiment = load_experiment_file(file, cluster=True)  # the operator also applies the cluster's trial policy
    target = namespace or experiment.metadata.namespace or _current_namespace(None)
    body = experiment.model_dump(mode="json", by_alias=True, exclude_none=True)
    body["metadata"]["namespace"] = target
    api = _kube(context)
    try:
        client.CustomObjectsApi(api).create_namespaced_custom_object(API_GROUP, API_VERSION, target, PLURAL, body)
    except ApiException as exc:
        if exc.status == 409:
            raise click.ClickException(
                f"NASExperiment {target}/{experiment.metadata.name} exists; change its budget with kubectl apply"
            ) from None
        raise click.ClickException(f"the API server refused it: {exc.body}") from None
    click.echo(f"nasexperiment.nas.operator.dev/{experiment.metadata.name} created in {target}")


@main.command()
@click.argument("name")
@namespace_option
@context_option
def status(name: str, namespace: str | None, context: str | None) -> None:
    """Phase, trial counts, hypervolume and conditions of an experiment on the cluster, and its saved state.

    The state is read from the store the experiment names (ConfigMap or SQL); exit status 1 when it cannot be.
    """
    namespace = _current_namespace(namespace)
    api = _kube(context)
    obj = _get_experiment(api, namespace, name)
    st = obj.get("status") or {}
    trials = st.get("trials") or {}
    budget = obj["spec"]["budget"]["maxTrials"]
    click.echo(f"{namespace}/{name}: {st.get('phase', 'Pending')} {st.get('reason', '')}".rstrip())
    if st.get("message"):
        click.echo(f"  {st['message']}")
    click.echo(
        f"  trials {trials.get('total', 0)}/{budget}: {trials.get('running', 0)} running, "
        f"{trials.get('succeeded', 0)} succeeded, {trials.get('failed', 0)} failed, {trials.get('stopped', 0)} stopped"
        + (f", {trials['earlyStopped']} stopped early" if trials.get("earlyStopped") else "")
    )
    if st.get("trainingSecondsSaved"):
        click.echo(f"  early stopping saved about {st['trainingSecondsSaved']:.0f} s of training")
    hv = st.get("hypervolume")
    if len(obj["spec"]["objectives"]) == 1:
        best, metric = st.get("bestTrial"), obj["spec"]["objectives"][0]["metric"]
        shown = f"{best['trial']}, {metric} {st['bestValue']:.6g}" if best else "none yet"
        click.echo(f"  best trial: {shown}")
    else:
        shown = "none" if hv is None else f"{hv:.6g}"
        click.echo(f"  Pareto front: {st.get('paretoSize') or 0} trials, hypervolume {shown}")
    full = st.get("fullTraining")
    if full:
        taus = ", ".join(f"{m} {t:.2f}" for m, t in (full.get("rankCorrelation") or {}).items()) or "not yet"
        click.echo(
            f"  full training: {full.get('succeeded', 0)} of {full.get('candidates', 0)} candidates trained "
            f"({full.get('running', 0)} running, {full.get('failed', 0)} failed); final front "
            f"{full.get('paretoSize', 0)} trials; Kendall's tau proxy/full: {taus}"
        )
    if st.get("warmStartTrials"):
        click.echo(f"  warm start: {st['warmStartTrials']} earlier trials given to the model")
    for condition in st.get("conditions") or []:
        click.echo(
            f"  {condition['type']}={condition['status']} {condition.get('reason', '')} "
            f"{condition.get('lastTransitionTime', '')}"
        )
    _, stored, where = _stored_state(api, namespace, obj)
    if stored is None:
        click.echo(f"  state: none saved yet in the {where}")
        return
    saved = stored.state
    counts = ", ".join(
        f"{saved.count(kind)} {kind}"
        for kind in ("queued", "launching", "running", "succeeded", "failed", "stopped", "earlyStopped")
    )
    click.echo(f"  state in the {where}: {len(saved.trials)} trials ({counts})")


@main.command()
@click.argument("name")
@namespace_option
@context_option
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Also write the Pareto plot (PNG).")
def pareto(name: str, namespace: str | None, context: str | None, plot: Path | None) -> None:
    """The Pareto front of an experiment on the cluster, as a table (and a plot of every trial).

    Read from the store the experiment names: its ConfigMap, or the SQL database of an opted-in Secret.
    """
    from nas_operator.local.results import plot_pareto_png
    from nas_operator.local.runner import full_training_table, pareto_table

    namespace = _current_namespace(namespace)
    api = _kube(context)
    obj = _get_experiment(api, namespace, name)
    experiment, stored, where = _stored_state(api, namespace, obj)
    if stored is None:
        raise click.ClickException(f"{namespace}/{name} has no saved state yet (in the {where})")
    console = Console()
    console.print(pareto_table(experiment, stored.state))
    if stored.state.full_trials:
        console.print(full_training_table(experiment, stored.state))
    if plot is not None:
        plot_pareto_png(experiment.spec, stored.state, plot)
        click.echo(f"plot written to {plot}")


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--trial", "index", type=int, required=True, help="Trial index (0 is the first trial).")
@click.option("-n", "--namespace", default=None, help="Namespace [default: the file's, else default].")
@policy_option
@click.option("--uid", default=None, help="The experiment's uid [default: a placeholder; the API server sets it].")
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE", help="A parameter's value (repeatable).")
def render(
    file: Path,
    index: int,
    namespace: str | None,
    policy_file: Path | None,
    uid: str | None,
    assignments: tuple[str, ...],
) -> None:
    """Print the Job the operator would create for trial N, with the trial policy applied, without a cluster.

    The parameters are the engine's candidate N for the spec's algorithm.seed: for the initial
    trials exactly what the operator launches (later ones depend on results; give them with
    --set). A spec that breaks the policy is refused with the field.
    """
    from nas_operator.cluster.render import PLACEHOLDER_UID, RenderError, render_trial_job

    documents = [d for d in _read_documents(file) if d.get("kind") == "NASExperiment"]
    if len(documents) != 1:
        raise click.ClickException(f"{file}: expected one NASExperiment document, found {len(documents)}")
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise click.ClickException(f'--set {assignment}: expected NAME=VALUE, e.g. "epochs=5"')
        overrides[name.strip()] = yaml.safe_load(value)
    try:
        policy = _trial_policy(policy_file)
        target = namespace or (documents[0].get("metadata") or {}).get("namespace") or "default"
        job = render_trial_job(
            documents[0], index, target, policy=policy, uid=uid or PLACEHOLDER_UID, overrides=overrides
        )
    except SpecError as exc:
        raise click.ClickException(f"{file} is refused:\n" + _indent(str(exc))) from None
    except (RenderError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(yaml.safe_dump(job, sort_keys=False), nl=False)


@main.command()
@click.argument("results_dirs", nargs=-1, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--kube", is_flag=True, help="Also show the cluster's NASExperiments, read with your kubeconfig.")
@click.option(
    "-n", "--namespace", "namespaces", multiple=True, help="Namespace to read (repeatable) [default: the kubeconfig's]."
)
@context_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True, help="Port (0: any free one).")
def dashboard(
    results_dirs: tuple[Path, ...], kube: bool, namespaces: tuple[str, ...], context: str | None, host: str, port: int
) -> None:
    """A live web page of experiments: local results directories and/or the cluster as your kubeconfig sees it.

    RESULTS_DIRS are directories `nasctl run` wrote (or folders of them) [default: nas-results, when
    neither it nor --kube is given]. Nothing runs in the cluster: the page reads what your account may read.
    """
    from nas_operator.dashboard.app import serve
    from nas_operator.dashboard.sources import KubeSource, LocalSource, Source

    directories = list(results_dirs)
    if not directories and not kube:
        if not Path("nas-results").is_dir():
            raise click.ClickException("no results directory given and no ./nas-results here; pass one, or --kube")
        directories = [Path("nas-results")]
    sources: list[Source] = []
    if directories:
        sources.append(LocalSource(directories))
    if kube:
        chosen = list(namespaces) or [_current_namespace(None)]
        sources.append(KubeSource(_kube(context), chosen))

    def ready(url: str) -> None:
        click.echo(f"nasctl dashboard: {url} (Ctrl-C to stop)", err=True)

    try:
        serve(sources, host, port, ready)
    except OSError as exc:
        raise click.ClickException(f"--host {host} --port {port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
