"""What a new user meets first, in Chromium against a real server: the untouched form launches, each role lands on a
page it may use, a password can be changed on a page, a finished run says so, samples come a page at a time, and the
playground starts from the run's own settings and shows what "auto" proposed."""

from __future__ import annotations

import re
from typing import Any

import pytest
from helpers import CHROMIUM, ensure_user
from test_browser import REVIEWER_PASSWORD, TRAINER_PASSWORD, log_in, log_in_with_password, served, team

from app.store import run_state
from app.store.db import session_scope
from app.store.models import Evaluation, Sample
from app.store.settings import Settings
from meal_core.enums import RunStatus

__all__ = ["served", "team"]  # the fixtures, used here by name

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed")
LONG_MS = 120_000


def test_the_untouched_form_launches_and_each_role_lands_where_it_may(
    served: tuple[str, Settings], page: Any, page_errors: list[str]
) -> None:
    base, settings = served
    # An unknown address shows the not-found page (logged out: a way to log in), never raw JSON; the API stays JSON.
    response = page.goto(f"{base}/no/such/<page>")
    assert response is not None and response.status == 404
    assert page.text_content("h1") == "Not found"
    assert "There is no page at /no/such/<page>." in (page.text_content("main") or "")  # text, not markup
    assert page.locator("main page").count() == 0
    assert page.text_content("#not-found-home") == "Log in"
    assert page.goto(f"{base}/api/nope").headers["content-type"].startswith("application/json")
    log_in(page, base, settings, "trainer")
    page.goto(f"{base}/runs/new")
    page.wait_for_selector("#run-form[data-ready='1']")
    labels = page.locator("#run-form .field > label").all_text_contents()
    assert any(label.startswith("CPU threads") for label in labels), labels  # a sentence, not "Cpu Threads"
    assert any(label.startswith("Name or path") for label in labels), labels
    page.click("#submit-button")  # nothing filled in: the README says the defaults launch the demo
    page.wait_for_url(re.compile(r".*/runs/\d+$"), timeout=LONG_MS)
    name = page.text_content("#run-name") or ""
    assert re.fullmatch(r"brevity vs coverage, \d\d-\d\d \d\d:\d\d", name), name
    run_id = int(page.url.rstrip("/").split("/")[-1])
    assert page.get_attribute("#playground-link", "href") == f"/playground?run={run_id}"

    # A reviewer logging in from the front page lands on their queues, not on "Not allowed".
    # Leave the run page first: its polls, answered 401 once the cookie is gone, would send the browser to
    # /login?next=/runs/1 and could overtake the visit to the front page (the CI saw the reviewer land on the run).
    page.goto("about:blank")
    page.context.clear_cookies()
    ensure_user(settings, "rae", "reviewer", REVIEWER_PASSWORD)
    page.goto(f"{base}/")
    page.wait_for_url(re.compile(r".*/login\?next=(%2F|/)$"))
    page.fill("#login-name", "rae")
    page.fill("#login-password", REVIEWER_PASSWORD)
    page.click("#login-button")
    page.wait_for_url(re.compile(r".*/review$"), timeout=LONG_MS)

    # Their own password, on a page: a wrong current one is refused, the right one changes it.
    page.click("#current-user")
    page.wait_for_url(re.compile(r".*/account$"))
    page.fill("#password-current", "not my password")
    page.fill("#password-new", "a brand new password")
    page.fill("#password-repeat", "a brand new password")
    page.click("#password-button")
    page.locator("#password-error").wait_for(state="visible")
    assert "wrong" in (page.text_content("#password-error") or "")
    page.fill("#password-current", REVIEWER_PASSWORD)
    page.click("#password-button")
    page.wait_for_url(re.compile(r".*/account\?changed=1$"), timeout=LONG_MS)
    page.locator("#password-done").wait_for(state="visible")
    page.click("#logout-button")
    page.wait_for_url(re.compile(r".*/login$"))
    page.fill("#login-name", "rae")
    page.fill("#login-password", "a brand new password")
    page.click("#login-button")
    page.wait_for_url(f"{base}/review", timeout=LONG_MS)  # the front page, for a reviewer: their queues
    assert page.locator("nav a[href='/docs']").count() == 1
    assert not page_errors, page_errors


def test_a_finished_run_says_so_and_its_samples_come_a_page_at_a_time(
    served: tuple[str, Settings], page: Any, page_errors: list[str]
) -> None:
    base, settings = served
    config = {"objectives": [{"name": "brevity", "type": "brevity"}, {"name": "coverage", "type": "coverage"}]}
    with session_scope(settings.database_url) as session:
        run_id = run_state.create_run(session, "finished", config, 1, "tia").id
        assert run_state.claim(session, run_id, "worker@test")
        run_state.request_stop(session, run_id, "tia")  # asked during its last iteration …
        assert run_state.finish(session, run_id, "worker@test", RunStatus.SUCCEEDED)  # … which it finished
        for position in range(30):
            session.add(
                Sample(
                    run_id=run_id,
                    step=1,
                    position=position,
                    prompt_id=f"p{position}",
                    prompt=f"prompt {position}",
                    weights=[0.5, 0.5],
                    response=f"response {position}",
                    raw_rewards={"brevity": -2.0, "coverage": 1.0},
                    normalized_rewards={"brevity": 0.0, "coverage": 0.0},
                    accepted=False,
                )
            )
        session.add(
            Evaluation(
                run_id=run_id,
                step=1,
                objectives=["brevity", "coverage"],
                hypervolume=0.05,
                reference_point=[-3.0, -3.0],
                points=[
                    {"weights": [w, 1 - w], "rewards": [w, 1 - w], "raw_rewards": [w, 1 - w], "on_front": True}
                    for w in (0.0, 0.5, 1.0)
                ],
                controllability={"brevity": 0.5, "coverage": 0.4},
                probe={},
            )
        )
    log_in(page, base, settings, "trainer")
    page.goto(f"{base}/runs/{run_id}")
    # The front's points say which weight made them; a single hypervolume point is not flattened onto −1…1.
    page.wait_for_function("document.querySelector('#chart-front').scatter?.drawnLabels?.length === 3")
    labels = page.evaluate("document.querySelector('#chart-front').scatter.drawnLabels")
    assert labels == ["0.00/1.00", "0.50/0.50", "1.00/0.00"], labels
    y_scale = page.evaluate("(s => [s.min, s.max])(document.querySelector('#chart-hypervolume').uplot.scales.y)")
    assert 0.04 < y_scale[0] < 0.05 < y_scale[1] < 0.06, y_scale
    page.wait_for_function("document.querySelector('#live-state').textContent.includes('no more updates')")
    assert "Stop asked by tia during its last iteration" in (page.text_content("#run-status-note") or "")
    page.wait_for_function("document.querySelectorAll('#samples-body td.text').length > 0")
    assert page.locator("#samples-body tr").count() == 12
    assert "samples 1–12 of 30" in (page.text_content("#samples-pager") or "")
    page.click("#samples-pager button:has-text('Next')")
    page.wait_for_function("document.querySelector('#samples-pager').textContent.includes('13–24')")
    assert "prompt 12" in (page.text_content("#samples-body") or "")
    assert not page_errors, page_errors


def test_the_playground_starts_from_the_runs_settings_and_shows_what_auto_proposed(
    team: tuple[str, Settings, int], page: Any, page_errors: list[str]
) -> None:
    base, _settings, run_id = team
    log_in_with_password(page, base, "tia", TRAINER_PASSWORD, f"/playground?run={run_id}")
    page.wait_for_selector(f"#pg-run option[value='{run_id}']", state="attached", timeout=LONG_MS)
    page.wait_for_function("document.querySelectorAll('#pg-weights .weight-row').length === 2", timeout=LONG_MS)
    page.wait_for_function("document.querySelector('#pg-max-tokens').value === '12'")  # the run's, not 64
    assert page.input_value("#pg-samples") == "4"
    page.locator("#pg-weights .weight-row").nth(1).locator("input[type=checkbox]").check()
    page.fill("#pg-prompt", "Name a fruit that grows on trees in warm countries and tastes sweet when ripe.")
    page.fill("#pg-max-tokens", "6")
    page.fill("#pg-samples", "2")
    page.click("#pg-generate")
    page.wait_for_function("document.querySelectorAll('#pg-outputs .pg-column').length === 2", timeout=LONG_MS)
    # The auto row shows the weights the net proposed, greyed; the column says the same.
    labels = page.locator("#pg-weights .weight-row").nth(1).locator(".mono").all_text_contents()
    assert all(re.fullmatch(r"auto \d\.\d\d", label) for label in labels), labels
    header = page.locator("#pg-outputs .pg-column h3").nth(1).text_content() or ""
    assert labels[0].removeprefix("auto ") in header, (labels, header)
    # Two samples per weight with their mean; raw scores in their own words; the front in plain words.
    assert page.locator("#pg-outputs .pg-mean").count() == 2
    outputs = page.text_content("#pg-outputs") or ""
    assert "VADER compound" in outputs and "Flesch reading ease" in outputs
    assert "dominates" not in outputs and "best trade-offs of the evaluation at iteration 2" in outputs
    # The history tells generations apart: checkpoint and weights.
    page.wait_for_function("document.querySelector('#pg-history').textContent.includes('iter-000002')")
    assert "(1.00, 0.00) auto" in (page.text_content("#pg-history") or "")
    # Sent to review, the queue's title is cut at a word, not mid-word.
    page.click("#pg-review")
    page.wait_for_url(re.compile(r".*/review/\d+$"), timeout=LONG_MS)
    page.wait_for_function("document.querySelector('#queue-name').textContent.includes('Playground #')")
    title = page.text_content("#queue-name") or ""
    assert title.endswith("in warm countries and…"), title
    # Each rating row says what it asks (the objective's rubric).
    page.wait_for_selector("#rating-body .rubric")
    rubrics = page.locator("#rating-body .rubric").all_text_contents()
    assert len(rubrics) == 3 and all(r.startswith("Which is better here?") for r in rubrics), rubrics
    assert not page_errors, page_errors


def test_compare_opens_with_a_run_picker_and_overlays_fronts_and_steering(
    served: tuple[str, Settings], page: Any, page_errors: list[str]
) -> None:
    base, settings = served
    objectives = ["brevity", "coverage"]
    config = {"objectives": [{"name": name, "type": name} for name in objectives], "seed": 3}
    run_ids = []
    with session_scope(settings.database_url) as session:
        for name in ("first", "second"):
            run_id = run_state.create_run(session, name, config, 2, "tia").id
            run_ids.append(run_id)
            for step in (1, 2):  # the same seed and settings: the same figures
                session.add(
                    Evaluation(
                        run_id=run_id,
                        step=step,
                        objectives=objectives,
                        hypervolume=0.05 * step,
                        reference_point=[-3.0, -3.0],
                        points=[
                            {"weights": [w, 1 - w], "rewards": [w, 1 - w], "raw_rewards": [w, 1 - w], "on_front": True}
                            for w in (0.0, 0.5, 1.0)
                        ],
                        controllability={"brevity": 0.5, "coverage": 0.4},
                        controllability_grid={"brevity": 0.8 * step / 2, "coverage": 0.7},
                        probe={},
                    )
                )
    log_in(page, base, settings, "trainer")
    page.goto(f"{base}/compare")
    for run_id in run_ids:
        page.check(f"#compare-picker input[value='{run_id}']")
    page.click("#picker-compare")
    page.wait_for_url(re.compile(r".*/compare\?ids=\d+,\d+$"))
    assert sorted(int(i) for i in page.url.split("=")[-1].split(",")) == run_ids
    # The fronts of both runs on one chart, and a steering chart per objective with a line per run.
    page.wait_for_function("document.querySelector('#compare-front .no-data')?.classList.contains('hidden')")
    assert page.locator("#compare-steering .chart-box").count() == 2
    page.wait_for_function(
        "document.querySelector('#compare-steering .chart-box')?.uplot?.data.length === 3"  # steps + one per run
    )
    dashes = page.evaluate("document.querySelector('#compare-hypervolume').uplot.series.slice(1).map(s => !!s.dash)")
    assert dashes == [False, True], dashes  # the second run's identical line is dashed, not hidden
    assert not page_errors, page_errors
