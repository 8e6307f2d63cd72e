"""A real headless Chromium for the dashboard tests: Debian's chromium driven by Debian's chromedriver via Selenium.

The driver's path is passed explicitly, so Selenium Manager never runs (it would try to download a
browser and a driver). The browser's console is collected so a test can require that a page logged
no error; `wait_js` polls a JavaScript expression with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium session; Selenium Manager is kept offline and never consulted."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    if not (os.path.isfile(CHROMIUM) and os.path.isfile(CHROMEDRIVER)):
        raise RuntimeError("chromium and chromedriver are needed (scripts/test installs Debian's chromium-driver)")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests run as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--use-angle=swiftshader",  # software WebGL for plotly's parallel coordinates
        "--enable-unsafe-swiftshader",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    """Messages the page logged at error level since the last call (uncaught exceptions, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_js(driver: Any, expression: str, timeout: float = 30.0) -> Any:
    """The value of a JavaScript expression once it is truthy; AssertionError with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return ({expression});")
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{expression} was {value!r} for {timeout} s; console: {console_errors(driver)}")


def assert_front_and_table(driver: Any, front: list[Any], trials: int) -> list[Any]:
    """The first Pareto plot holds exactly `front` (its trace data and its drawn points) and the table every trial.

    Returns the front's drawn points, for a test to click.
    """
    from selenium.webdriver.common.by import By

    wait_js(driver, "document.querySelector('#pair-0 .scatterlayer .trace') !== null")
    plotted = driver.execute_script(
        "return document.getElementById('pair-0').data.find(t => t.name === 'Pareto front').customdata;"
    )
    assert sorted(plotted) == sorted(front)
    points = driver.find_elements(By.CSS_SELECTOR, "#pair-0 .scatterlayer .trace:nth-child(3) path.point")
    assert len(points) == len(front)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#trials tbody tr")) == trials
    return list(points)
