"""The held-out evaluation in the browser: the experiment page's held-out columns and the note naming the prompt
file, and the run page's held-out card apart from its per-step evaluations. The file name is a user's text: shown
as text, never markup. Records are stored as the worker leaves them (tests/test_experiment_heldout.py shows the
worker storing them)."""

from __future__ import annotations

from typing import Any

import httpx
import test_browser
from helpers import BROWSER_WAIT_MS, bearer, tiny_run_config
from test_browser import HOSTILE, log_in
from test_experiments_api import finish_with_records, held_out_row

from app.store.db import session_scope
from app.store.settings import Settings

served = test_browser.served  # a live server on a fresh embedded-mode data folder


def launch(base: str, settings: Settings, name: str, **fields: Any) -> dict[str, Any]:
    config = tiny_run_config(settings.data_dir / "uploads" / "no-model", iterations=2).model_dump(mode="json")
    experiment = {"base": config, "seeds": 2, "algorithms": ["meal", "static"], "baseline": "static", **fields}
    response = httpx.post(
        f"{base}/api/experiments", json={"name": name, "experiment": experiment}, headers=bearer(settings), timeout=30
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_held_out_columns_note_and_run_card(served: tuple[str, Settings], page: Any, page_errors: list[str]) -> None:
    base, settings = served
    prompts = str(settings.data_dir / "uploads" / f"{HOSTILE}.txt")
    created = launch(base, settings, "held-out", held_out={"prompts": prompts, "samples_per_weight": 2})
    by_key = {(m["variant"], m["seed"]): m["id"] for m in created["members"]}
    for (variant, seed), run_id in by_key.items():
        finish_with_records(settings, run_id, [1.0, 2.0, 3.0])
        with session_scope(settings.database_url) as session:
            row = held_out_row(run_id, 1.0 + seed + (variant == "meal"), 0.5 if variant == "meal" else 0.1)
            row.prompts = prompts
            session.add(row)
    plain = launch(base, settings, "no-held-out")

    log_in(page, base, settings, "trainer")
    page.goto(f"{base}/experiments/{created['id']}")
    page.wait_for_function("document.querySelectorAll('#held-out-body tr').length === 2", timeout=BROWSER_WAIT_MS)
    assert page.locator("#held-out-section").is_visible()
    note = page.locator("#held-out-note").inner_text()
    assert prompts in note and "2 per prompt and weight" in note
    meal = page.locator("#held-out-body tr[data-variant='meal'] td").all_inner_texts()
    assert meal[:3] == ["meal", "2", "2.500 ± 0.707"]
    assert meal[3].startswith("1.000 ")  # paired with static, seed by seed: +1 each
    assert meal[4] == "0.500 ± 0.000" and meal[5].startswith("0.400 ")
    static = page.locator("#held-out-body tr[data-variant='static'] td").all_inner_texts()
    assert static[3] == "baseline" and static[5] == "baseline"

    page.goto(f"{base}/experiments/{plain['id']}")
    page.wait_for_function("document.querySelectorAll('#member-body tr').length === 4", timeout=BROWSER_WAIT_MS)
    assert not page.locator("#held-out-section").is_visible()

    page.goto(f"{base}/runs/{by_key[('meal', 0)]}")
    page.wait_for_function(
        "!document.querySelector('#held-out-card').classList.contains('hidden')", timeout=BROWSER_WAIT_MS
    )
    assert page.locator("#held-out-hv").inner_text() == "2.0000"
    assert prompts in page.locator("#held-out-caption").inner_text()
    corners = page.locator("#held-out-table tbody tr[data-objective='positivity'] td").all_inner_texts()
    assert corners == ["positivity", "0.500", "1.000", "0.200", "0.400"]
    # The per-step evaluations are the run's own: the latest is iteration 2, with its own hypervolume.
    page.wait_for_function(
        "document.querySelector('#eval-tables h3')?.textContent === 'Latest evaluation: iteration 2'",
        timeout=BROWSER_WAIT_MS,
    )
    assert page.locator("#held-out-card img").count() == 0 and page.locator("#held-out-caption img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert not page_errors, page_errors
