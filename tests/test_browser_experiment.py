"""An experiment from the launch form to its filled page, in Chromium against a real server and a real Celery worker
training the tiny model: seeds, algorithms and a varied field set in the form ("Launch experiment"), a refused value
shown next to its field, then 2 seeds × 2 algorithms trained to a page with the variant table, the paired
comparison, the curves averaged over seeds (one colour per variant, a shared legend), the held-out card and the
exports; and a run that failed under a dead worker resumed from the experiment page."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import CHROMIUM, WorkerProcess, worker_env
from test_browser import log_in, tiny_form_values

from app.store.db import get_engine
from app.store.migrate import upgrade
from app.store.settings import Settings

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed")
# Four tiny runs one after another on a machine other work shares: generous, and every wait ends on its condition.
TRAINED_MS = 900_000
VARIANTS = ["meal-max_new_tokens=12", "static-max_new_tokens=12"]


@pytest.fixture()
def trained_by_a_worker(
    tmp_path: Path, tiny_model_dir: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, Settings]]:
    """A live server and a `meal worker` on an SQLite database and broker; the tiny model's folder is allowed."""
    from live_server import live_server

    settings = Settings(
        data_dir=tmp_path / "data",
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}",
        allowed_roots=[tiny_model_dir.parent],
    )
    upgrade(settings.database_url)
    env = {**worker_env(settings), "TRANSFORMERS_OFFLINE": "1", "MEAL_RECORDER_FLUSH_S": "0.2"}
    worker = WorkerProcess(env, tmp_path)
    worker.start()
    try:
        worker.wait_for(" ready.", timeout=300)
        with live_server(settings) as base:
            yield base, settings
    finally:
        worker.stop()
        report = getattr(request.node, "report_call", None)
        if report is None or report.failed:
            print(f"---- worker output ----\n{worker.output()[-8000:]}")
        get_engine(settings.database_url).dispose()


def cells(row: Any) -> list[str]:
    return [text.strip() for text in row.locator("td").all_text_contents()]


def is_number(text: str) -> bool:
    return re.fullmatch(r"[-+]?\d+(\.\d+)?(e[-+]?\d+)?", text) is not None


def test_an_experiment_launched_from_the_form_trains_to_a_filled_page(
    trained_by_a_worker: tuple[str, Settings], page: Any, page_errors: list[str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    base, settings = trained_by_a_worker
    log_in(page, base, settings, "trainer")
    page.goto(f"{base}/runs/new")
    page.wait_for_selector("#run-form[data-ready='1']")
    # Nothing varied: the form starts a run, as it always did.
    assert page.text_content("#submit-button") == "Start run"
    assert page.locator(".vary:not(.hidden)").count() == 0
    assert page.locator("#experiment-fields").is_hidden()  # held-out prompts and baseline: experiments only

    page.click("#expand-all")
    page.fill("[name='name']", "lr <i>grid</i>")
    values = {**tiny_form_values(tiny_model_dir), "iterations": "2", "eval.every": "1"}
    for field, value in values.items():
        page.fill(f"[name='{field}']", value)

    # Two seeds, two algorithms and a varied field: the submit becomes "Launch experiment".
    page.click("button.vary-toggle[data-vary-path='seed']")
    assert page.text_content("#submit-button") == "Launch experiment"
    page.fill("[name='vary:seed']", "2")
    page.click("button.vary-toggle[data-vary-path='algorithm.name']")
    page.select_option("[name='vary:algorithm.name']", ["meal", "static"])
    page.click("button.vary-toggle[data-vary-path='algorithm.max_new_tokens']")
    assert page.is_disabled("[name='algorithm.max_new_tokens']")  # each variant sets it
    # A value the field refuses: the 422 is shown next to that field, nothing is launched.
    page.fill("[name='vary:algorithm.max_new_tokens']", "12, -3")
    # A nullable field takes "none"; a JSON list carries values with commas. Both are sent as typed.
    page.click("button.vary-toggle[data-vary-path='data.max_train_prompts']")
    page.fill("[name='vary:data.max_train_prompts']", "none, 8")
    page.click("button.vary-toggle[data-vary-path='data.prompt_column']")
    page.fill("[name='vary:data.prompt_column']", '["question, long", "prompt"]')
    with page.expect_request(lambda r: r.url.endswith("/api/experiments") and r.method == "POST") as sent:
        page.click("#submit-button")
    assert json.loads(sent.value.post_data or "")["experiment"]["vary"] == {
        "algorithm.max_new_tokens": [12, -3],
        "data.max_train_prompts": [None, 8],
        "data.prompt_column": ["question, long", "prompt"],
    }
    error = page.locator(".field:has([name='vary:algorithm.max_new_tokens']) .error-msg")
    error.wait_for(state="visible")
    assert "max_new_tokens=-3" in (error.text_content() or ""), error.text_content()
    assert "experiment was not launched" in (page.text_content("#form-error") or "")
    assert "/runs/new" in page.url

    page.click("button.vary-toggle[data-vary-path='data.max_train_prompts']")  # "Don't vary"
    page.click("button.vary-toggle[data-vary-path='data.prompt_column']")
    page.fill("[name='vary:algorithm.max_new_tokens']", "12")
    # The held-out evaluation and the baseline: a file outside the uploads folder is refused next to its field.
    assert page.locator("#experiment-fields").is_visible()
    page.fill("[name='held_out.prompts']", "/etc/passwd")
    page.fill("[name='baseline']", VARIANTS[0])
    page.click("#submit-button")
    error = page.locator(".field:has([name='held_out.prompts']) .error-msg")
    error.wait_for(state="visible")
    assert "outside the folders this server allows" in (error.text_content() or ""), error.text_content()
    uploads = settings.data_dir / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "heldout.txt").write_text("Name a river.\nWhy is the sky blue?\nDescribe rain.\n")
    page.fill("[name='held_out.prompts']", str(uploads / "heldout.txt"))
    page.fill("[name='held_out.samples_per_weight']", "1")
    page.fill("[name='held_out.max_prompts']", "2")
    page.click("#submit-button")
    page.wait_for_url(re.compile(r".*/experiments/\d+$"))
    experiment_id = int(page.url.rstrip("/").split("/")[-1])
    cookie = {"Cookie": "; ".join(f"{c['name']}={c['value']}" for c in page.context.cookies())}
    stored = httpx.get(f"{base}/api/experiments/{experiment_id}", headers=cookie).json()
    assert stored["name"] == "lr <i>grid</i>" and stored["runs"] == 4
    assert stored["config"]["seeds"] == 2 and stored["config"]["algorithms"] == ["meal", "static"]
    assert stored["config"]["vary"] == {"algorithm.max_new_tokens": [12]}
    assert stored["config"]["held_out"] == {
        "prompts": str(uploads / "heldout.txt"),
        "samples_per_weight": 1,
        "max_prompts": 2,
    }
    assert stored["baseline"] == VARIANTS[0]
    assert {(m["variant"], m["seed"]) for m in stored["members"]} == {(v, s) for v in VARIANTS for s in (0, 1)}

    # Trained by the worker; the page polls until every run finished.
    page.wait_for_function(
        "document.querySelector('#experiment-name').textContent.endsWith(': 4 of 4 runs finished')", timeout=TRAINED_MS
    )
    assert page.locator("#experiment-name i").count() == 0  # the name is text, never markup
    # Every run evaluated on the held-out file's first 2 prompts: the card names the file, a row per variant.
    assert str(uploads / "heldout.txt") in (page.text_content("#held-out-note") or "")
    for variant in VARIANTS:
        row = cells(page.locator(f"#held-out-body tr[data-variant='{variant}']"))
        assert row[1] == "2" and is_number(row[2].split(" ± ")[0]), row

    # The variant table: every variant's hypervolume over both seeds, with numbers.
    for variant in VARIANTS:
        row = cells(page.locator(f"#variant-body tr[data-variant='{variant}'][data-figure='hv_final']"))
        assert row[2] == "2" and is_number(row[3].split(" ± ")[0]) and row[4].startswith("["), row
    # The paired comparison against the baseline (the first variant).
    compared = cells(page.locator(f"#variant-body tr[data-variant='{VARIANTS[1]}'][data-figure='hv_final']"))
    assert is_number(compared[5]) and compared[6].startswith("["), compared
    baseline = cells(page.locator(f"#variant-body tr[data-variant='{VARIANTS[0]}'][data-figure='hv_final']"))
    assert baseline[5] == "baseline"

    # The curves averaged over seeds: a chart per series with data, one legend entry per variant.
    legend = page.locator("#curve-legend [data-variant]")
    assert [legend.nth(i).get_attribute("data-variant") for i in range(legend.count())] == VARIANTS
    for series in ("hypervolume", "reward/brevity", "reward/coverage", "pref_weight_learned/brevity"):
        box = f"#curve-charts section[data-series='{series}'] .chart-box"
        page.wait_for_selector(f"{box} canvas")
        points = page.evaluate(f'document.querySelector("{box}").uplot.data[0].length')
        assert points >= 2, (series, points)
    # Hypervolume at steps 0, 1 and 2 for meal, with both seeds behind each mean (n in the hover legend).
    hv = page.evaluate(
        "(() => { const u = document.querySelector(\"#curve-charts section[data-series='hypervolume'] .chart-box\")"
        ".uplot; return [u.data[0], u.data[1], u.series.map((s) => s.label)]; })()"
    )
    assert hv[0] == [0, 1, 2] and all(v is not None for v in hv[1]) and hv[2][1] == VARIANTS[0]
    page.select_option("#curve-band", "ci")  # the other band redraws the same charts
    assert page.locator("#curve-charts section").count() >= 3

    # Exports: the JSON link serves the experiment with its report and curves; the CSV has a row per figure.
    href = page.get_attribute("#export-json", "href")
    exported = page.request.get(f"{base}{href}").json()
    assert set(exported["report"]["curves"]) == set(VARIANTS)
    assert exported["report"]["curves"][VARIANTS[0]]["hypervolume"][0]["n"] == 2
    with page.expect_download() as download:
        page.click("#export-csv")
    path = tmp_path / "experiment.csv"
    download.value.save_as(path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("variant,figure,n,mean,sd")
    assert any(line.startswith(f"{VARIANTS[1]},hv_final,2,") for line in lines), lines[:5]
    assert exported["finished"] == 4
    # The JSON link follows the baseline chosen on the page.
    page.select_option("#baseline", VARIANTS[1])
    page.wait_for_function(f"document.querySelector('#export-json').href.endsWith(encodeURIComponent('{VARIANTS[1]}'))")
    chosen = page.request.get(f"{base}{page.get_attribute('#export-json', 'href')}").json()
    assert chosen["report"]["baseline"] == VARIANTS[1]
    # Each run's own figures: beside it in the runs table, and a row per run in the runs CSV.
    for member in exported["members"]:
        row = cells(page.locator(f"#member-body tr[data-run-id='{member['id']}']"))
        assert is_number(row[4]) and is_number(row[6]) and float(row[6]) > 0, row  # final hypervolume, wall minutes
    with page.expect_download() as download:
        page.click("#export-runs-csv")
    path = tmp_path / "runs.csv"
    download.value.save_as(path)
    header, *runs = path.read_text().splitlines()
    assert header.startswith("variant,seed,") and {"hv_final", "wall_minutes"} <= set(header.split(",")), header
    assert sorted(line.split(",")[:2] for line in runs) == sorted([v, str(s)] for v in VARIANTS for s in (0, 1))

    assert not page_errors, page_errors


def test_a_failed_run_is_resumed_and_the_experiment_deleted_from_its_page(
    tmp_path: Path, page: Any, page_errors: list[str]
) -> None:
    """A worker died under one run of an experiment (the run failed, resumable): its row on the experiment page has
    a Resume button that queues it again; the finished run has none. Then the experiment is deleted from its page.
    No worker: nothing trains here."""
    from helpers import bearer
    from live_server import live_server
    from test_experiments_api import base_config

    from app.store import run_state
    from app.store.db import session_scope
    from app.store.models import Run
    from meal_core.enums import RunStatus

    settings = Settings(data_dir=tmp_path / "data", broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    upgrade(settings.database_url)
    with live_server(settings) as base:
        experiment = {"base": base_config(), "seeds": 1, "algorithms": ["meal", "static"]}
        created = httpx.post(
            f"{base}/api/experiments", json={"name": "cut short", "experiment": experiment}, headers=bearer(settings)
        ).json()
        died, finished = (m["id"] for m in created["members"])
        with session_scope(settings.database_url) as session:
            for run_id in (died, finished):
                assert run_state.claim(session, run_id, "worker@gone")
            assert sorted(run_state.fail_runs_of_worker(session, "worker@gone", "worker died")) == [died, finished]
            run_state.requeue(session, finished)  # the other run was resumed and trained to its end
            assert run_state.claim(session, finished, "w2")
            assert run_state.finish(session, finished, "w2", RunStatus.SUCCEEDED)
        log_in(page, base, settings, "trainer")
        page.goto(f"{base}/experiments/{created['id']}")
        row = page.locator(f"#member-body tr[data-run-id='{died}']")
        row.locator("button", has_text="Resume").wait_for()
        assert page.locator(f"#member-body tr[data-run-id='{finished}'] button").count() == 0
        row.locator("button", has_text="Resume").click()
        page.wait_for_function(
            f"document.querySelector(\"#member-body tr[data-run-id='{died}']\").textContent.includes('queued')"
        )
        assert row.locator("button").count() == 0
        with session_scope(settings.database_url) as session:
            resumed = session.get(Run, died)
            assert resumed is not None and resumed.status == RunStatus.QUEUED

        # Delete, confirmed by the experiment's name: refused while a run is queued, then done once it stopped.
        def delete() -> None:
            page.click("#delete-button")
            assert page.is_disabled("#delete-confirm-button")
            page.fill("#delete-confirm-name", "cut short")
            page.click("#delete-confirm-button")

        delete()
        page.wait_for_selector("#experiment-error:not(.hidden)")
        assert f"{died} (queued)" in (page.text_content("#experiment-error") or "")
        with session_scope(settings.database_url) as session:
            run_state.request_stop(session, died, "trainer")
        delete()
        page.wait_for_url(f"{base}/experiments")
        assert httpx.get(f"{base}/api/experiments/{created['id']}", headers=bearer(settings)).status_code == 404
    get_engine(settings.database_url).dispose()
    assert not page_errors, page_errors
