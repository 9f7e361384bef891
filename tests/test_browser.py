"""End to end in a real browser: `meal up` (web server + Celery worker on an SQLite broker) in a temporary data
folder, driven by Chromium through Playwright. Launch a tiny run from the generated form, watch the weights chart
grow live on the run page, stop the run from the page.

Chromium comes from Debian (`apt-get install chromium`, done by the setup script); Playwright's own browser
download is never used.
"""

from __future__ import annotations

import contextlib
import json
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
from helpers import (
    BROWSER_WAIT_MS,
    CHROMIUM,
    WorkerProcess,
    ensure_user,
    session_cookie,
    trained_run,
    worker_env,
)
from sqlalchemy import select

from app.auth import SESSION_COOKIE
from app.store import run_state
from app.store.db import get_engine, session_scope
from app.store.metric_store import Point, ingest
from app.store.migrate import upgrade
from app.store.models import Evaluation, PlaygroundGeneration, Sample
from app.store.queue import PLAYGROUND_QUEUE
from app.store.settings import Settings
from meal_core.config import RunConfig
from meal_core.enums import PENDING_JOB_STATUSES, JobStatus, RunPhase, RunStatus

SCREENSHOT = Path("/tmp/run_page.png")
TIMEOUT_MS = BROWSER_WAIT_MS

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
    env["MEAL_ALLOWED_ROOTS"] = json.dumps([str(tmp_path.parent.parent)])  # the tiny model lives in pytest's tmp
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


def first_login_link(log_path: Path) -> str:
    """The one-time admin link `meal up` prints on its first start (once its workers are up)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = re.search(r"http://\S+/login/once/\S+", log_path.read_text())
        if found:
            return found.group(0)
        time.sleep(0.2)
    pytest.fail(f"`meal up` printed no login link:\n{log_path.read_text()[-3000:]}")


def test_launch_watch_and_stop_a_run(
    meal_up: str, page: Any, page_errors: list[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    name = "browser <b>test</b> run"

    # Logged out, a page sends the browser to the login page; the first start's one-time link logs the admin in.
    page.goto(f"{meal_up}/runs/new")
    assert "/login?next=/runs/new" in page.url
    link = first_login_link(tmp_path / "meal-up.log")
    page.goto(link)
    assert page.url.rstrip("/") == meal_up
    assert "admin · admin" in page.text_content("#current-user")
    # Used once: a second visit is refused.
    assert httpx.get(link, follow_redirects=False).headers["location"] == "/login?expired=1"
    api = {"Cookie": "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())}

    # The form is generated from the schema and pre-filled with the defaults.
    page.goto(f"{meal_up}/runs/new")
    page.wait_for_selector("#run-form[data-ready='1']")
    assert page.input_value("[name='iterations']") == str(RunConfig().iterations)  # the demo's
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
    config = httpx.get(f"{meal_up}/api/runs/{run_id}", headers=api).json()["config"]
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
    # The worker's phase reached the page: the iteration under way, under the overall progress.
    page.locator("#run-progress .phase", has_text=re.compile(r"^Training iteration \d+ of 200$")).wait_for(
        timeout=TIMEOUT_MS
    )
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
    assert page.locator("#run-progress .phase").count() == 0, "a stopped run has its status, no phase"
    run = httpx.get(f"{meal_up}/api/runs/{run_id}", headers=api).json()
    assert run["status"] == "stopped" and run["created_by"] == "admin" and run["stopped_by"] == "admin"
    # The reproducibility record reached the page once the run had calibrated (fetched after a status event).
    page.wait_for_function(
        "document.querySelector('#run-reproducibility').textContent.includes('\"torch\"')", timeout=TIMEOUT_MS
    )

    # The runs page lists it with its (escaped) name and status.
    page.goto(meal_up)
    row = page.locator(f"tr[data-run-id='{run_id}']")
    row.wait_for(timeout=TIMEOUT_MS)
    assert row.locator("a.run-link").text_content() == name
    assert row.locator(".badge").text_content() == "stopped"

    assert not page_errors, page_errors


def test_a_dataset_run_from_the_form_trains_and_exports_from_its_page(
    meal_up: str, page: Any, page_errors: list[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A team's own data: a parquet file of chat conversations, named in the form, trains through the worker to
    the end; the run page then exports the policy at chosen weights and offers the zip for download."""
    import datasets

    conversations = tmp_path / "conversations.parquet"
    rows = [{"messages": [{"role": "user", "content": f"Describe fruit number {i} in a sentence."}]} for i in range(16)]
    datasets.Dataset.from_list(rows).to_parquet(str(conversations))

    page.goto(first_login_link(tmp_path / "meal-up.log"))
    api = {"Cookie": "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())}
    page.goto(f"{meal_up}/runs/new")
    page.wait_for_selector("#run-form[data-ready='1']")
    page.click("#expand-all")
    page.fill("[name='name']", "dataset run")
    values = {
        **tiny_form_values(tiny_model_dir),
        "data.train_prompts": str(conversations),
        "iterations": "1",
        "checkpoint.every": "1",
    }
    for field, value in values.items():
        page.fill(f"[name='{field}']", value)
    page.click("#submit-button")
    page.wait_for_url(re.compile(r".*/runs/\d+$"), timeout=TIMEOUT_MS)
    run_id = int(page.url.rstrip("/").split("/")[-1])
    page.wait_for_function("document.querySelector('#run-status').textContent === 'succeeded'", timeout=600_000)
    # It trained on the file's conversations, as the chat template renders them.
    samples = httpx.get(f"{meal_up}/api/runs/{run_id}/samples", headers=api).json()
    assert samples and all("fruit number" in s["prompt"] for s in samples), samples[:2]

    # Export at the weights the sliders say, from the run page; the zip comes back from the download link.
    page.wait_for_selector("#export-weights input[type=range]")
    assert page.locator("#export-weights input[type=checkbox]").count() == 0  # no "auto" for an export
    page.click("#export-button")
    link = page.locator("#export-list tr[data-status='succeeded'] a")
    link.wait_for(timeout=300_000)
    response = httpx.get(f"{meal_up}{link.get_attribute('href')}", headers=api)
    assert response.status_code == 200 and response.content[:2] == b"PK"
    exported = httpx.get(f"{meal_up}/api/runs/{run_id}/exports", headers=api).json()
    assert [e["weights"] for e in exported] == [[0.5, 0.5]] and exported[0]["created_by"] == "admin"
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


def log_in(page: Any, base: str, settings: Settings, role: str) -> None:
    """The browser gets a session of a user of that role, as if it had logged in."""
    cookie, _ = session_cookie(settings, role)
    page.context.add_cookies([{"name": SESSION_COOKIE, "value": cookie, "url": base, "httpOnly": True}])


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
    log_in(page, base, settings, "trainer")
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

    # Every page works under the CSP, the API's own page included (served offline): no violation, no error.
    strict = page.context.browser.new_context()
    strict.add_cookies(page.context.cookies())
    try:
        viewer = strict.new_page()
        violations: list[str] = []
        viewer.on("console", lambda m: m.type == "error" and violations.append(m.text))
        viewer.on("pageerror", lambda e: violations.append(str(e)))
        for path in (f"/runs/{run_id}", "/", "/runs/new", "/compare", "/playground", "/review", "/docs"):
            viewer.goto(f"{base}{path}")
            viewer.wait_for_load_state("networkidle")
        viewer.wait_for_selector(".opblock-summary-path[data-path='/api/runs']", state="attached", timeout=TIMEOUT_MS)
        assert not violations, violations
    finally:
        strict.close()

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
        timeout=TIMEOUT_MS,
    )

    assert page.evaluate("window.__pwned") is None
    assert not page_errors, page_errors


# -- the team: playground, review, agreement, as a trainer and two reviewers would use them -------------------------

TRAINER_PASSWORD = "trainer password"
REVIEWER_PASSWORD = "reviewer password"


@pytest.fixture()
def team(tmp_path: Path, tiny_model_dir: Path) -> Iterator[tuple[str, Settings, int]]:
    """A live server, a playground worker, a trained tiny run, a trainer and two reviewers with passwords."""
    from live_server import live_server

    settings = Settings(data_dir=tmp_path / "data", broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    upgrade(settings.database_url)
    run_id = trained_run(settings, tiny_model_dir)
    ensure_user(settings, "tia", "trainer", TRAINER_PASSWORD)
    for name in ("rae", "rob"):
        ensure_user(settings, name, "reviewer", REVIEWER_PASSWORD)
    worker = WorkerProcess(worker_env(settings), tmp_path, "--queues", PLAYGROUND_QUEUE)
    worker.start()
    try:
        worker.wait_for(" ready.", timeout=300)
        with live_server(settings) as base:
            yield base, settings, run_id
    finally:
        worker.stop()
        get_engine(settings.database_url).dispose()


def test_run_page_reconnects_after_a_server_restart(tmp_path: Path, page: Any, page_errors: list[str]) -> None:
    """The web server restarts while a run page is open: the page says so, reconnects by itself and backfills what
    was recorded meanwhile from its last event id, each point once."""
    from live_server import live_server

    settings = Settings(data_dir=tmp_path, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    upgrade(settings.database_url)
    url, port, objectives = settings.database_url, free_port(), ["positivity", "brevity"]
    config = {"objectives": [{"name": name, "type": "brevity"} for name in objectives]}
    with session_scope(url) as session:
        run_id = run_state.create_run(session, "restarted", config, 100, "local").id
    write_metrics(url, run_id, range(20), objectives)
    points = "document.querySelector('#chart-weights').dataset.points === '{}'"
    live_state = "document.querySelector('#live-state').textContent.includes('{}')"

    with live_server(settings, port) as base:
        log_in(page, base, settings, "trainer")
        page.goto(f"{base}/runs/{run_id}")
        page.wait_for_function(points.format(20))
        page.wait_for_function(live_state.format("live"))
    page.wait_for_function(live_state.format("reconnecting"))
    write_metrics(url, run_id, range(20, 35), objectives)  # recorded while the server is down
    with live_server(settings, port):
        page.wait_for_function(points.format(35), timeout=TIMEOUT_MS)
        page.wait_for_function(live_state.format("live"))
        write_metrics(url, run_id, range(35, 40), objectives)
        page.wait_for_function(points.format(40))
        steps = page.evaluate("document.querySelector('#chart-weights').uplot.data[0]")
    assert steps == list(range(40)), "every step once, in order"
    get_engine(url).dispose()
    assert page_errors == []


def log_in_with_password(page: Any, base: str, name: str, password: str, then: str) -> None:
    page.goto(f"{base}{then}")
    page.wait_for_url(re.compile(r".*/login\?next=.*"))
    page.fill("#login-name", name)
    page.fill("#login-password", password)
    page.click("#login-button")
    page.wait_for_url(re.compile(f".*{re.escape(then)}$"), timeout=TIMEOUT_MS)


def review_and_submit(page: Any, base: str, queue_id: int, choice: str) -> None:
    page.goto(f"{base}/review/{queue_id}")
    page.wait_for_selector("#rating-body input")
    for target in page.eval_on_selector_all(
        "#rating-body input", "inputs => [...new Set(inputs.map(i => i.dataset.target))]"
    ):
        page.check(f"#rating-body input[data-target='{target}'][value='{choice}']")
    page.fill("#review-comment", HOSTILE)
    page.click("#submit-review")
    page.wait_for_function(
        "document.querySelector('#review-state').textContent.includes('submitted')", timeout=TIMEOUT_MS
    )


def wait_for_generation(settings: Settings, run_id: int, timeout_s: float = 900) -> None:
    """Until the run's newest playground generation has finished (the worker recorded its answer)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with session_scope(settings.database_url) as session:
            status = session.scalar(
                select(PlaygroundGeneration.status)
                .where(PlaygroundGeneration.run_id == run_id)
                .order_by(PlaygroundGeneration.id.desc())
                .limit(1)
            )
        if status is not None and status not in PENDING_JOB_STATUSES:
            assert status == JobStatus.SUCCEEDED, status
            return
        time.sleep(0.5)
    pytest.fail(f"the playground generation of run {run_id} did not finish within {timeout_s} s")


def test_team_playground_review_and_agreement(
    team: tuple[str, Settings, int], page: Any, page_errors: list[str]
) -> None:
    base, settings, run_id = team
    hostile_prompt = f'<script>window.__pwned = 1</script>"><img src=x onerror="window.__pwned = 2"> {HOSTILE}'

    # The trainer compares two weight vectors on the trained run.
    log_in_with_password(page, base, "tia", TRAINER_PASSWORD, "/playground")
    page.wait_for_selector(f"#pg-run option[value='{run_id}']", state="attached")
    page.wait_for_function("document.querySelectorAll('#pg-weights .weight-row').length === 2")
    page.fill("#pg-prompt", hostile_prompt)
    page.fill("#pg-max-tokens", "8")
    page.click("#pg-generate")
    # The worker's answer first (recorded in the database: generating on a busy machine takes what it takes), then
    # the page showing it.
    wait_for_generation(settings, run_id)
    page.wait_for_function("document.querySelectorAll('#pg-outputs .pg-column').length === 2", timeout=TIMEOUT_MS)
    headers = page.eval_on_selector_all("#pg-outputs .pg-column h3", "hs => hs.map(h => h.textContent)")
    assert headers[0].startswith("positivity 1.00") and headers[1].startswith("positivity 0.00"), headers
    per_weight = int(page.input_value("#pg-samples"))  # several samples per weight (4 by default), with their mean
    assert page.locator("#pg-outputs .pg-sample").count() == 2 * per_weight
    # An output that is hostile text is shown as text (a stored generation, loaded from the history).
    with session_scope(settings.database_url) as session:
        sample = {
            "text": hostile_prompt,
            "scores": {"positivity": 0.1, "readability": 50.0},
            "normalized": {},
            "front": None,
        }
        session.add(
            PlaygroundGeneration(
                run_id=run_id,
                created_by="tia",
                checkpoint="iter-000002",
                prompt=hostile_prompt,
                weights=[[1, 0], [0, 1]],
                seed=0,
                temperature=0.7,
                max_new_tokens=8,
                samples=1,
                status="succeeded",
                outputs=[{"weights": w, "auto": False, "samples": [sample]} for w in ([1.0, 0.0], [0.0, 1.0])],
            )
        )
    page.reload()
    page.wait_for_selector("#pg-history li button")
    page.click("#pg-history li button")  # the newest: the hostile one
    page.wait_for_function("document.querySelectorAll('#pg-outputs .pg-text').length === 2")
    assert page.locator("#pg-outputs .pg-text").first.text_content() == hostile_prompt
    assert page.locator("#pg-outputs img, #pg-outputs script").count() == 0

    # Send it to review: a blind comparison queue.
    page.click("#pg-review")
    page.wait_for_url(re.compile(r".*/review/\d+$"), timeout=TIMEOUT_MS)
    queue_id = int(page.url.rstrip("/").split("/")[-1])
    page.wait_for_selector("#item-prompt")
    assert page.text_content("#item-prompt") == hostile_prompt
    page.click("#logout-button")
    page.wait_for_url(re.compile(r".*/login$"))

    # Two reviewers rate and submit; a reviewer cannot reach the playground.
    for name, choice in (("rae", "A"), ("rob", "A")):
        log_in_with_password(page, base, name, REVIEWER_PASSWORD, "/review")
        page.wait_for_selector(f"tr[data-queue-id='{queue_id}'] a.queue-link")
        assert page.locator("#build-form").count() == 0  # building queues is a trainer's
        review_and_submit(page, base, queue_id, choice)
        assert page.locator("#item-responses img, #item-responses script").count() == 0
        assert page.goto(f"{base}/playground").status == 403
        page.goto(f"{base}/review")
        page.click("#logout-button")
        page.wait_for_url(re.compile(r".*/login$"))

    # The trainer reads the agreement summary.
    log_in_with_password(page, base, "tia", TRAINER_PASSWORD, f"/review/{queue_id}/summary")
    page.wait_for_selector("#agreement-body tr[data-target='overall']", timeout=TIMEOUT_MS)
    overall = page.locator("#agreement-body tr[data-target='overall'] td").all_text_contents()
    assert overall[:2] == ["overall", "2"] and overall[3] == "1.000", overall  # two judgements that agree
    progress = page.locator("#progress-body tr").all_text_contents()
    assert len(progress) == 2 and all("1" in row for row in progress)
    assert page.evaluate("window.__pwned") is None
    assert not page_errors, page_errors


def test_run_page_and_runs_list_name_the_phase_and_its_progress(
    served: tuple[str, Settings], page: Any, page_errors: list[str]
) -> None:
    """Long before its first iteration a run says what it does: the phase, the phase's own count and ETA, beside the
    overall iteration progress, on the run page (pushed by the event stream) and in the runs list. A finished run
    shows its status, no phase."""
    base, settings = served
    log_in(page, base, settings, "trainer")
    url = settings.database_url
    with session_scope(url) as session:
        run_id = run_state.create_run(session, "phased", {"seed": 1}, 16, "local").id
        assert run_state.claim(session, run_id, "w")

    def worker_reports(phase: RunPhase, done: int, total: int, eta: float | None) -> None:
        """What the worker's recorder writes at a flush, with the heartbeat that keeps the run its own."""
        with session_scope(url) as session:
            run_state.heartbeat(session, run_id, "w")
            run_state.report_phase(session, run_id, phase, done, total, eta)

    worker_reports(RunPhase.EVALUATING, 96, 264, 720.0)
    progress = "#run-progress"

    page.goto(f"{base}/runs/{run_id}")
    evaluating = "Evaluating the policy: 96 / 264 generations, about 12m 00s left"
    page.locator(progress, has_text=evaluating).wait_for(timeout=TIMEOUT_MS)
    assert "0 / 16 iterations" in page.locator(progress).inner_text()

    with session_scope(url) as session:  # the stream pushes each change: no reload
        run_state.report_progress(session, run_id, 3, 16, 130.0)
    worker_reports(RunPhase.TRAINING, 3, 16, 130.0)
    page.locator(progress, has_text="Training iteration 4 of 16").wait_for(timeout=TIMEOUT_MS)
    assert "3 / 16 iterations · ETA 2m 10s" in page.locator(progress).inner_text()
    worker_reports(RunPhase.EVALUATING, 0, 264, None)
    page.locator(progress, has_text="Evaluating the trained policy: 0 / 264 generations").wait_for()
    assert "left" not in page.locator(f"{progress} .phase").inner_text(), "no ETA before a generation is done"
    worker_reports(RunPhase.LOADING, 0, 0, None)
    page.locator(progress, has_text="Loading the model and the objectives").wait_for()
    assert page.locator(f"{progress} .phase").inner_text() == "Loading the model and the objectives"

    page.goto(f"{base}/")  # the runs list
    row = page.locator(f"#runs-body tr[data-run-id='{run_id}']")
    row.locator(".phase", has_text="Loading the model and the objectives").wait_for(timeout=TIMEOUT_MS)

    # Every phase has its words in the one table the pages read.
    labels = page.evaluate("import('/static/js/common.js').then((m) => Object.keys(m.PHASE_TEXT))")
    assert sorted(labels) == sorted(RunPhase)

    with session_scope(url) as session:
        assert run_state.finish(session, run_id, "w", RunStatus.SUCCEEDED)
    page.goto(f"{base}/runs/{run_id}")
    page.locator(progress, has_text="3 / 16 iterations").wait_for(timeout=TIMEOUT_MS)  # rendered by the page
    assert page.locator(f"{progress} .phase").count() == 0
    assert not page_errors, page_errors
