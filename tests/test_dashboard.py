"""`nasctl dashboard` over a local results directory, driven in a real headless Chromium.

The results directory is made by the real loop (Ax's qNEHVI engine, FileStore, the in-process backend whose
trials write real TensorBoard event files), so the page reads exactly what `nasctl run` leaves. The server is
the `nasctl dashboard` command itself, as a user starts it.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from nas_operator.backends.inprocess import InProcessBackend
from nas_operator.core.backend import TrialLaunch
from nas_operator.core.loop import ExperimentLoop
from nas_operator.core.state import LoopState, TrialRecord, spec_fingerprint
from nas_operator.dashboard.hypervolume import exact_hypervolume
from nas_operator.dashboard.model import hypervolume_trace
from nas_operator.resource.spec import NASExperiment
from nas_operator.resource.spec_checks import load_experiment
from nas_operator.search.engine import Engine
from nas_operator.search.pareto import hypervolume, hypervolume_of, pareto_indices
from nas_operator.search.worker import InlineEngineWorker
from nas_operator.storage.store import FileStore

from .browser import assert_front_and_table, chromium, console_errors, wait_js
from .conftest import ROOT, toy_doc

SCREENSHOT = ROOT / "docs" / "dashboard.png"


def toy_experiment(name: str, algorithm: str = "qnehvi", max_trials: int = 9) -> NASExperiment:
    document = toy_doc(maxTrials=max_trials, parallelism=3)
    document["metadata"]["name"] = name
    document["spec"]["algorithm"] = {"name": algorithm, "seed": 3, "initialTrials": 6}
    return load_experiment(document, cluster=False)


def _evaluate(launch: TrialLaunch) -> dict[str, float]:
    """A 2-objective toy (f1 = x, f2 = 1 - sqrt(x) + y) that logs a learning curve as a real trainer would."""
    from torch.utils.tensorboard import SummaryWriter

    x, y = float(launch.parameters["x"]), float(launch.parameters["y"])
    if launch.name.endswith("-t4"):
        raise RuntimeError("diverged at epoch 2")
    writer = SummaryWriter(log_dir=launch.log_dir)
    for epoch in range(5):
        writer.add_scalar("val_loss", (1.0 - x) / (epoch + 1) + y, epoch)
    writer.close()
    return {"f1": x, "f2": 1.0 - x**0.5 + y}


def run_experiment(experiment: NASExperiment, results_dir: Path) -> LoopState:
    """The real loop, as `nasctl run` drives it, with trials as in-process functions writing TensorBoard logs."""
    spec = experiment.spec
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "experiment.yaml").write_text(
        yaml.safe_dump(experiment.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False)
    )
    engine = Engine.create(spec, experiment.metadata.name)
    backend = InProcessBackend(_evaluate, max_workers=3, log_root=results_dir / "tensorboard")
    state = LoopState(experiment.metadata.name, spec_fingerprint(spec))
    loop = ExperimentLoop(spec, state, InlineEngineWorker(engine), backend, FileStore(results_dir), engine.snapshot())
    deadline = time.monotonic() + 240
    try:
        while not loop.finished:
            assert time.monotonic() < deadline, "the toy experiment did not finish in 240 s"
            loop.step()
            time.sleep(0.01)
    finally:
        backend.shutdown()
    return state


def synthetic_results(directory: Path, trials: int, objectives: int = 2, seed: int = 0) -> LoopState:
    """A results directory of `trials` finished trials with made-up metrics (for page speed, not for the model)."""
    document = toy_doc(maxTrials=trials, parallelism=8)
    document["metadata"]["name"] = directory.name
    document["spec"]["objectives"] = [
        {"metric": f"f{k + 1}", "goal": "minimize", "threshold": 1.1} for k in range(objectives)
    ]
    experiment = load_experiment(document, cluster=False)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "experiment.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    rng = random.Random(seed)
    state = LoopState(directory.name, spec_fingerprint(experiment.spec), phase="Succeeded", started_at=time.time())
    for index in range(trials):
        x, y = rng.random(), rng.random()
        metrics = {"f1": x, "f2": 1 - x**0.5 + 0.3 * y, "f3": (1 - x) ** 2 + 0.3 * y}
        failed = index % 50 == 7
        state.trials[index] = TrialRecord(
            index=index,
            name=f"{directory.name}-t{index}",
            parameters={"x": x, "y": y},
            generator="Sobol" if index < 10 else "MBM",
            status="failed" if failed else "succeeded",
            started_at=1000.0 + index,
            finished_at=1010.0 + index,
            metrics={} if failed else {f"f{k + 1}": metrics[f"f{k + 1}"] for k in range(objectives)},
            reason="exit code 1" if failed else "",
        )
    FileStore(directory).save(state, {})
    return state


class Dashboard:
    """`nasctl dashboard` as a process on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        command = [sys.executable, "-m", "nas_operator.cli", "dashboard", "--port", "0", *args]
        self.process = subprocess.Popen(
            command, env={**os.environ, **(env or {})}, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # blocks until the server listens (or the command fails)
        found = re.search(r"(http://\S+/)", line)
        if not found:
            self.process.kill()
            raise AssertionError(f"nasctl dashboard did not start: {line}{self.process.stderr.read()}")
        self.url = found.group(1)

    def get(self, path: str, host: str | None = None) -> tuple[int, bytes]:
        request = urllib.request.Request(self.url.rstrip("/") + path, headers={"Host": host} if host else {})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NASExperiment, LoopState]:
    directory = tmp_path_factory.mktemp("nas-results") / "toy"
    experiment = toy_experiment("toy")
    return directory, experiment, run_experiment(experiment, directory)


@pytest.fixture(scope="module")
def dashboard(results: tuple[Path, NASExperiment, LoopState]) -> Iterator[Dashboard]:
    server = Dashboard(str(results[0].parent))
    try:
        yield server
    finally:
        server.stop()


def test_hypervolume_over_trials_ends_at_the_status_hypervolume(tmp_path: Path) -> None:
    state = synthetic_results(tmp_path / "hv", 300, objectives=3)
    spec = load_experiment(yaml.safe_load((tmp_path / "hv" / "experiment.yaml").read_text()), cluster=False).spec
    trace = hypervolume_trace(spec, state)
    values = [p["hypervolume"] for p in trace]
    assert len(trace) == state.count("succeeded")
    assert values == sorted(values)  # a front only grows
    assert values[-1] == pytest.approx(hypervolume(spec, state.results()), rel=1e-9)
    first_hundred = {i: m for i, m in state.results().items() if i <= trace[99]["index"]}
    assert values[99] == pytest.approx(hypervolume(spec, first_hundred), rel=1e-9)


@pytest.mark.parametrize("objectives", [2, 3, 4, 5])
def test_the_sliced_hypervolume_equals_botorchs(objectives: int) -> None:
    rng = np.random.default_rng(objectives)
    points, reference = rng.random((60, objectives)), np.full(objectives, 0.2)
    points[:5] = points[5]  # duplicates and points below the reference count once or not at all
    points[6] = 0.1
    assert exact_hypervolume(points, reference) == pytest.approx(hypervolume_of(points, reference), rel=1e-12)
    assert exact_hypervolume(np.full((3, objectives), 0.1), reference) == 0.0


def test_the_api_answers_only_its_own_host_and_serves_plotly_from_the_package(dashboard: Dashboard) -> None:
    status, body = dashboard.get("/", host="attacker.example:80")
    assert status == 421, body
    status, body = dashboard.get("/static/plotly.min.js")
    import plotly

    assert status == 200 and body == (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    assert dashboard.get("/static/..%2Fapp.py")[0] == 404
    assert dashboard.get("/api/experiments/local~nothing")[0] == 404


def test_downloads_are_the_files_nasctl_run_writes(
    dashboard: Dashboard, results: tuple[Path, NASExperiment, LoopState]
) -> None:
    _, experiment, state = results
    status, csv_body = dashboard.get("/api/experiments/local~toy/trials.csv")
    assert status == 200
    lines = csv_body.decode().splitlines()
    assert lines[0].startswith("index,trial,status,generator,pareto,x,y,f1,f2")
    assert len(lines) == 1 + len(state.trials)
    front = json.loads(dashboard.get("/api/experiments/local~toy/pareto.json")[1])
    assert [p["index"] for p in front["paretoFront"]] == pareto_indices(experiment.spec, state.results())
    unchanged = dashboard.json(
        f"/api/experiments/local~toy?version={dashboard.json('/api/experiments/local~toy')['version']}"
    )
    assert unchanged["unchanged"] is True


def test_the_page_shows_the_experiments_front_trials_and_a_clicked_trial(
    dashboard: Dashboard, results: tuple[Path, NASExperiment, LoopState], tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _, experiment, state = results
    front = pareto_indices(experiment.spec, state.results())
    with chromium() as driver:
        driver.get(dashboard.url)
        wait_js(driver, "window.dashboard.ready && document.querySelector('#experiments tr[data-key]')")
        row = driver.find_element(By.CSS_SELECTOR, '#experiments tr[data-key="local~toy"]')
        assert "Succeeded" in row.text and f"{len(front)}" in row.text
        row.click()
        points = assert_front_and_table(driver, front, len(state.trials))  # exactly the observed front, every trial
        # Filter and sort the table.
        failed = [t for t in state.trials.values() if t.status == "failed"]
        Select(driver.find_element(By.ID, "status-filter")).select_by_value("failed")
        rows = driver.find_elements(By.CSS_SELECTOR, "#trials tbody tr")
        assert len(rows) == len(failed) == 1 and "diverged at epoch 2" in rows[0].get_attribute("innerHTML")
        Select(driver.find_element(By.ID, "status-filter")).select_by_value("")
        driver.find_element(By.CSS_SELECTOR, '#trials th[data-sort="m:f1"]').click()
        order = [int(r.get_attribute("data-index")) for r in driver.find_elements(By.CSS_SELECTOR, "#trials tbody tr")]
        f1 = {i: m["f1"] for i, m in state.results().items()}
        assert [i for i in order if i in f1] == sorted(f1, key=lambda i: f1[i])
        # A click on a point of the front shows that trial and its learning curve from its TensorBoard log.
        ActionChains(driver).move_to_element(points[0]).click().perform()
        shown = int(wait_js(driver, "document.getElementById('trial-detail').dataset.index"))
        assert shown in front
        title = driver.find_element(By.ID, "trial-title").text
        assert title.startswith(state.trials[shown].name + " ") and "on the Pareto front" in title
        wait_js(driver, "document.querySelector('#curves .scatterlayer .trace') !== null")
        curve = driver.execute_script("return document.getElementById('curves').data[0];")
        assert curve["name"] == "val_loss" and curve["x"] == [0, 1, 2, 3, 4]
        # Ax's diagnostics, on request.
        driver.find_element(By.ID, "diagnostics-button").click()
        wait_js(driver, "document.querySelector('#diagnostics .card')", timeout=180)
        kinds = driver.execute_script(
            "return [...document.querySelectorAll('#diagnostics .card')].map(c => "
            "[c.dataset.kind, c.querySelector('.plot') !== null]);"
        )
        assert ["cross-validation", True] in kinds and ["sensitivity", True] in kinds, kinds
        wait_js(driver, "document.querySelector('#diagnostics .plot .main-svg') !== null")
        driver.set_window_size(1400, 2900)  # the whole page: front, hypervolume, the clicked trial, the table
        driver.execute_script("window.scrollTo(0, 0)")
        wait_js(driver, "document.querySelector('#curves .main-svg') && document.querySelector('#pair-0 .main-svg')")
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
        if os.environ.get("NAS_UPDATE_SCREENSHOTS"):
            driver.save_screenshot(str(SCREENSHOT))
        assert console_errors(driver) == []


def test_the_page_follows_a_running_search(tmp_path: Path) -> None:
    directory = tmp_path / "live"
    synthetic_results(directory, 20)
    server = Dashboard(str(directory))
    try:
        with chromium() as driver:
            driver.get(server.url + "#/e/local~live")
            wait_js(driver, "document.querySelectorAll('#trials tbody tr').length === 20")
            synthetic_results(directory, 30)  # the run went on: ten more trials saved
            wait_js(driver, "document.querySelectorAll('#trials tbody tr').length === 30", timeout=20)
            assert console_errors(driver) == []
    finally:
        server.stop()


@pytest.mark.parametrize("objectives", [2, 3])
def test_a_thousand_trials_load_fast(tmp_path: Path, objectives: int) -> None:
    """Page load time of a 1,000-trial experiment, from navigation to every plot and the table drawn."""
    directory = tmp_path / "big"
    state = synthetic_results(directory, 1000, objectives=objectives)
    server = Dashboard(str(directory))
    try:
        with chromium() as driver:
            driver.get(server.url + "#/")  # plotly.js parsed and cached once, as for a user who opened the list
            wait_js(driver, "window.dashboard.ready")
            timings: list[float] = []
            data_ms: list[float] = []
            for _ in range(3):
                driver.get("about:blank")
                driver.get(server.url + "#/e/local~big")
                timings.append(wait_js(driver, "window.dashboard.firstRenderMs"))
                data_ms.append(driver.execute_script("return window.dashboard.firstDataMs;"))
            rows = driver.find_elements("css selector", "#trials tbody tr")
            assert len(rows) == len(state.trials)
            if objectives >= 3:
                parcoords = wait_js(driver, "window.dashboard.parcoordsMs")
                print(f"\nparallel coordinates drawn {parcoords - timings[-1]:.0f} ms after the rest (software WebGL)")
                assert driver.execute_script("return document.querySelector('#parcoords .parcoords') !== null")
            assert console_errors(driver) == []
        best = min(timings)
        print(f"\n1,000 trials, {objectives} objectives: ready in {timings} ms, data in after {data_ms} ms")
        assert best < 4000, timings
    finally:
        server.stop()
