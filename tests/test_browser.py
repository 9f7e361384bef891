"""End to end in a real browser: `meal up` (web server + Celery worker on an SQLite broker) in a temporary data
folder, driven by Chromium through Playwright. Launch a tiny run from the generated form, watch the weights chart
grow live on the run page, stop the run from the page.

Chromium comes from Debian (`apt-get install chromium`, done by the setup script); Playwright's own browser
download is never used.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import run_state
from app.db import get_engine, session_scope
from app.metric_store import Point, ingest
from app.migrate import upgrade
from app.models import Evaluation, RunStatus, Sample
from app.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = Path("/tmp/run_page.png")
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium; scripts/setup.sh does it)"
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM to the whole group (`meal up` and its web and worker children), SIGKILL after `grace` seconds."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
    process.wait(timeout=10)


@pytest.fixture()
def meal_up(tmp_path: Path) -> Iterator[str]:
    """The real product, as a user starts it; yields its base URL. Its output is shown if the test fails."""
    port = free_port()
    data_dir = tmp_path / "data"
    log_path = tmp_path / "meal-up.log"
    meal = Path(sys.executable).parent / "meal"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env = {k: v for k, v in env.items() if not k.startswith("MEAL_")}  # only --data-dir decides where data goes
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(meal), "up", "--host", "127.0.0.1", "--port", str(port), "--data-dir", str(data_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: the teardown kills web and worker too
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"`meal up` exited with {process.returncode}:\n{log_path.read_text()[-5000:]}")
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"`meal up` did not answer /healthz within 120 s:\n{log_path.read_text()[-5000:]}")
            time.sleep(0.3)
        yield base
    finally:
        stop_process_group(process)
        print(f"--- meal up output ---\n{log_path.read_text()[-8000:]}")


@pytest.fixture()
def page_errors() -> list[str]:
    """Uncaught exceptions and console errors of the test's page: a test ends by asserting there were none."""
    return []


@pytest.fixture()
def page(page_errors: list[str]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    def on_console(message: Any) -> None:
        # A 4xx the page asked for on purpose (the invalid form submission) is logged by Chromium too: not a bug.
        if message.type == "error" and "Failed to load resource" not in message.text:
            page_errors.append(f"console: {message.text}")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(20_000)
            page.on("pageerror", lambda error: page_errors.append(f"page error: {error}"))
            page.on("console", on_console)
            yield page
        finally:
            browser.close()


def tiny_form_values(model_dir: Path) -> dict[str, str]:
    """Input name → value: the sizes of conftest.tiny_run_config, but long enough to keep running until stopped."""
    return {
        "model.name_or_path": str(model_dir),
        "model.device": "cpu",
        "lora.r": "4",
        "lora.alpha": "8",
        "data.prompts_per_iteration": "4",
        "data.max_train_prompts": "12",
        "algorithm.samples_per_prompt": "3",
        "algorithm.max_new_tokens": "12",
        "algorithm.calibration_prompts": "4",
        "algorithm.policy_lr": "0.005",
        "algorithm.micro_batch_size": "4",
        "algorithm.max_policy_steps": "3",
        "algorithm.weight_lr": "1.0",
        "algorithm.meta_lr": "0.01",
        "algorithm.max_repeated_ngram_share": "1.0",
        "algorithm.max_unknown_word_share": "1.0",
        "eval.every": "0",
        "eval.prompts": "2",
        "eval.grid_points": "3",
        "eval.probe_pairs": "3",
        "checkpoint.every": "0",
        "iterations": "200",
        "seed": "7",
    }


def weight_points(page: Any) -> int:
    return int(page.get_attribute("#chart-weights", "data-points") or 0)


def test_launch_watch_and_stop_a_run(meal_up: str, page: Any, page_errors: list[str], tiny_model_dir: Path) -> None:
    name = "browser <b>test</b> run"

    # The form is generated from the schema and pre-filled with the defaults.
    page.goto(f"{meal_up}/runs/new")
    page.wait_for_selector("#run-form[data-ready='1']")
    assert page.input_value("[name='iterations']") == "16"
    assert page.input_value("[name='objectives.0.type']") == "brevity"

    page.click("#expand-all")
    page.fill("[name='name']", name)
    for field, value in tiny_form_values(tiny_model_dir).items():
        page.fill(f"[name='{field}']", value)
    # Swapping an objective's type swaps its fields (relevance has model_path, readability has cap).
    page.select_option("[name='objectives.0.type']", "sentiment")
    page.select_option("[name='objectives.1.type']", "readability")
    assert page.locator("[name='objectives.1.cap']").count() == 1
    assert page.locator("[name='objectives.1.model_path']").count() == 0
    page.fill("[name='objectives.1.name']", "readability")

    # An invalid value: the server's 422 is shown next to the field, nothing is started.
    page.fill("[name='objectives.0.name']", "Not Valid")
    page.click("#submit-button")
    error = page.locator(".field:has([name='objectives.0.name']) .error-msg")
    error.wait_for(state="visible", timeout=TIMEOUT_MS)
    assert "pattern" in error.text_content()
    assert "/runs/new" in page.url

    page.fill("[name='objectives.0.name']", "positivity")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r".*/runs/\d+$"), timeout=TIMEOUT_MS)
    run_id = int(page.url.rstrip("/").split("/")[-1])
    assert page.text_content("#run-name") == name  # untrusted text shown as text, never as markup
    assert page.locator("#run-name b").count() == 0

    # The run's stored config is what the form said.
    config = httpx.get(f"{meal_up}/api/runs/{run_id}").json()["config"]
    assert [(o["name"], o["type"]) for o in config["objectives"]] == [
        ("positivity", "sentiment"),
        ("readability", "readability"),
    ]
    assert config["model"]["name_or_path"] == str(tiny_model_dir)
    assert config["iterations"] == 200 and config["eval"]["every"] == 0

    # Live: the weights chart grows without a reload (at least two distinct increases).
    page.evaluate("window.__sameDocument = true")
    seen = [weight_points(page)]
    while len(seen) < 3:
        page.wait_for_function(
            "n => Number(document.querySelector('#chart-weights').dataset.points) > n", arg=seen[-1], timeout=TIMEOUT_MS
        )
        seen.append(weight_points(page))
    assert seen == sorted(set(seen)), seen
    assert page.evaluate("window.__sameDocument") is True  # no reload happened
    page.wait_for_function("document.querySelector('#run-status').textContent === 'running'", timeout=TIMEOUT_MS)
    page.wait_for_function("document.querySelectorAll('#samples-body tr td.text').length > 0", timeout=TIMEOUT_MS)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # Stop from the page: stopping, then stopped (pushed by the event stream).
    assert page.is_enabled("#stop-button")
    page.click("#stop-button")
    page.wait_for_function(
        "['stopping', 'stopped'].includes(document.querySelector('#run-status').textContent)", timeout=TIMEOUT_MS
    )
    page.wait_for_function("document.querySelector('#run-status').textContent === 'stopped'", timeout=TIMEOUT_MS)
    page.wait_for_function("!document.querySelector('#resume-button').disabled", timeout=TIMEOUT_MS)
    assert page.is_disabled("#stop-button")
    assert httpx.get(f"{meal_up}/api/runs/{run_id}").json()["status"] == "stopped"

    # The runs page lists it with its (escaped) name and status.
    page.goto(meal_up)
    row = page.locator(f"tr[data-run-id='{run_id}']")
    row.wait_for(timeout=TIMEOUT_MS)
    assert row.locator("a.run-link").text_content() == name
    assert row.locator(".badge").text_content() == "stopped"

    assert not page_errors, page_errors


# -- the run and compare pages against a real server with data written straight into its database ------------------

HOSTILE = '<img src=x onerror="window.__pwned = 1">'


def write_metrics(url: str, run_id: int, steps: range, objectives: list[str]) -> None:
    points = []
    for step in steps:
        for k, name in enumerate(objectives):
            w = 0.5 + (0.3 if k == 0 else -0.3) * step / 100
            points += [
                Point(f"pref_weight_learned/{name}", step, w, 0.0),
                Point(f"pref_weight_std/{name}", step, 0.05, 0.0),
                Point(f"pref_weight_net/{name}", step, w - 0.02, 0.0),
                Point(f"reward/{name}", step, k + step / 10, 0.0),
            ]
        points += [Point("loss/policy", step, 3 - step / 50, 0.0), Point("accept_rate", step, 0.3, 0.0)]
    with session_scope(url) as session:
        ingest(session, run_id, points)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    from live_server import live_server

    settings = Settings(data_dir=tmp_path, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    upgrade(settings.database_url)
    with live_server(settings) as base:
        yield base, settings
    get_engine(settings.database_url).dispose()


def x_scale(page: Any) -> tuple[float, float]:
    return tuple(
        page.evaluate(
            "(() => { const x = document.querySelector('#chart-weights').uplot.scales.x; return [x.min, x.max]; })()"
        )
    )


def test_run_page_keeps_zoom_escapes_text_and_compares(
    served: tuple[str, Settings], page: Any, page_errors: list[str]
) -> None:
    base, settings = served
    url = settings.database_url
    objectives = ["positivity", "brevity"]
    config = {"objectives": [{"name": "positivity", "type": "sentiment"}, {"name": "brevity", "type": "brevity"}]}
    with session_scope(url) as session:
        run_id = run_state.create_run(session, HOSTILE, {**config, "seed": 1}, 100, "local").id
        other_id = run_state.create_run(session, "other", {**config, "seed": 2}, 100, "local").id
        assert run_state.claim(session, run_id, "w")
        session.add(
            Sample(
                run_id=run_id,
                step=3,
                position=0,
                prompt_id="p0",
                prompt=HOSTILE,
                weights=[0.3, 0.7],
                response=f"<b>bold?</b> {HOSTILE}",
                raw_rewards={"positivity": 0.5, "brevity": -3.0},
                normalized_rewards={"positivity": 0.1, "brevity": -0.2},
                accepted=True,
            )
        )
        for step, gain in ((0, 1.0), (10, 2.0)):
            session.add(
                Evaluation(
                    run_id=run_id,
                    step=step,
                    objectives=objectives,
                    hypervolume=1.5 * gain,
                    reference_point=[-3.0, -3.0],
                    points=[
                        {
                            "weights": [w, 1 - w],
                            "rewards": [gain * w, gain * (1 - w)],
                            "raw_rewards": [w, 1 - w],
                            "on_front": True,
                        }
                        for w in (0.0, 0.5, 1.0)
                    ],
                    controllability={"positivity": 0.9, "brevity": 0.8},
                    probe={"positivity": 0.4, "brevity": 0.3},
                    controllability_grid={"positivity": 1.0, "brevity": 0.75},
                    controllability_null={"positivity": 0.125, "brevity": 0.25},
                    degenerate_share=0.0,
                    responses=66,
                )
            )
    write_metrics(url, run_id, range(50), objectives)
    write_metrics(url, other_id, range(30), objectives)

    page.goto(f"{base}/runs/{run_id}")
    page.wait_for_function("document.querySelector('#chart-weights').dataset.points === '50'")
    assert page.text_content("#run-name") == HOSTILE
    page.wait_for_function("document.querySelectorAll('#samples-body td.text').length === 2")
    cells = page.locator("#samples-body td.text")
    assert cells.nth(0).text_content() == HOSTILE
    assert cells.nth(1).text_content() == f"<b>bold?</b> {HOSTILE}"
    assert page.locator("#samples-body img, #samples-body b").count() == 0
    page.wait_for_function("document.querySelector('#eval-table') !== null")
    table = page.text_content("#eval-table")
    assert "0.900" in table and "0.750" in table and "0.125" in table  # per response, grid, null

    # Steering: one chart per objective, one line per evaluation, reward against the weight asked for it.
    page.wait_for_function("document.querySelector('#chart-steering').dataset.evaluations === '2'")
    steering = page.eval_on_selector_all(
        ".sub-charts#chart-steering .chart-box", "boxes => boxes.map(b => b.uplot.data)"
    )
    assert steering == [[[0, 0.5, 1], [0, 0.5, 1], [0, 1, 2]]] * 2
    assert x_scale(page) == (0, 49)

    # Any recorded key can be charted, including those without a chart of their own.
    options = page.eval_on_selector_all("#metric-picker option", "options => options.map(o => o.value)")
    assert {"accept_rate", "loss/policy", "pref_weight_std/brevity"} <= set(options), options
    page.select_option("#metric-picker", "pref_weight_std/brevity")
    page.wait_for_function(
        "(() => { const u = document.querySelector('#chart-any').uplot;"
        " return u && u.series[1].label === 'pref_weight_std/brevity'"
        " && u.data[1].filter((v) => v === 0.05).length === 50; })()"
    )

    # Zoom into the weights chart by dragging, then let new points stream in: the zoom stays.
    box = page.locator("#chart-weights .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, y, steps=5)
    page.mouse.up()
    zoomed = x_scale(page)
    assert 5 < zoomed[0] < zoomed[1] < 30, zoomed
    write_metrics(url, run_id, range(50, 60), objectives)
    page.wait_for_function("document.querySelector('#chart-weights').dataset.points === '60'")
    assert x_scale(page) == zoomed
    # Double-click resets the zoom; from then on the chart follows new data again.
    page.dblclick("#chart-weights .u-over")
    page.wait_for_function("document.querySelector('#chart-weights').uplot.scales.x.max === 59")
    write_metrics(url, run_id, range(60, 70), objectives)
    page.wait_for_function("document.querySelector('#chart-weights').uplot.scales.x.max === 69")

    # A failure arrives through the event stream: error and traceback shown as text, Resume enabled.
    with session_scope(url) as session:
        run_state.finish(session, run_id, "w", RunStatus.FAILED, f"RuntimeError: {HOSTILE}", f"Traceback\n{HOSTILE}")
    page.wait_for_function("document.querySelector('#run-status').textContent === 'failed'")
    assert page.is_visible("#run-error")
    assert page.text_content("#run-error-text") == f"RuntimeError: {HOSTILE}"
    page.click("#run-traceback-box summary")
    assert page.text_content("#run-traceback") == f"Traceback\n{HOSTILE}"
    assert page.is_enabled("#resume-button") and page.is_disabled("#stop-button")

    # Compare: both runs on the same charts, and the config diff shows only what differs.
    page.goto(f"{base}/compare?ids={run_id},{other_id}")
    page.wait_for_selector("#config-diff tbody tr")
    assert page.locator("#config-diff tbody tr").count() == 1
    assert page.locator("#config-diff tbody tr.differs td").first.text_content() == "seed"
    page.uncheck("#hide-identical")
    assert page.locator("#config-diff tbody tr").count() > 1
    assert page.locator("#compare-rewards .uplot").count() == 2
    assert page.locator("#compare-weights .uplot").count() == 2
    assert page.evaluate("document.querySelector('#compare-rewards .chart-box').uplot.data.length") == 3
    assert page.text_content("#run-legend").count(HOSTILE) == 1

    # The other run is still queued, so active: the page follows it without a click.
    assert "updating every" in page.text_content("#live-note")
    write_metrics(url, other_id, range(30, 40), objectives)
    page.wait_for_function(
        "(() => { const d = document.querySelector('#compare-rewards .chart-box').uplot.data;"
        " const i = d[0].indexOf(39); return i >= 0 && d[2][i] != null; })()",
        timeout=20_000,
    )

    assert page.evaluate("window.__pwned") is None
    assert not page_errors, page_errors
