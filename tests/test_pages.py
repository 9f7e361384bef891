"""The browser pages, server side: each renders with its key elements, untrusted text is escaped, and the launch
form's YAML/JSON parser endpoint validates like POST /api/runs does."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import session_cookie

from app.auth import CSRF_HEADER, SESSION_COOKIE
from app.main import create_app
from app.store import run_state
from app.store.db import session_scope
from app.store.settings import Settings

EVIL = "<script>alert(1)</script>"


@pytest.fixture()
def settings(embedded_settings: Settings) -> Settings:
    return embedded_settings


@pytest.fixture()
def client(settings: Settings) -> Iterator[TestClient]:
    """A trainer's browser: a session cookie, and the page's CSRF token sent back with every change."""
    cookie, csrf = session_cookie(settings)
    with TestClient(create_app(settings), cookies={SESSION_COOKIE: cookie}, headers={CSRF_HEADER: csrf}) as client:
        yield client


def add_run(settings: Settings, name: str, config: dict[str, object] | None = None) -> int:
    config = config or {
        "objectives": [{"name": "positivity", "type": "sentiment"}, {"name": "brevity", "type": "brevity"}],
        "iterations": 5,
    }
    with session_scope(settings.database_url) as session:
        return run_state.create_run(session, name, config, 5, "local").id


def scripts_of(html: str) -> list[str]:
    return re.findall(r'<script[^>]*src="([^"]+)"', html)


def test_runs_page(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    for needle in (
        'id="runs-table"',
        'id="runs-body"',
        'id="compare-button"',
        'href="/runs/new"',
        "/static/css/app.css",
    ):
        assert needle in html
    assert "/static/js/runs.js" in scripts_of(html)
    # The nav links every page.
    for link in ('href="/"', 'href="/runs/new"', 'href="/compare"'):
        assert link in html


def test_new_run_page(client: TestClient) -> None:
    html = client.get("/runs/new").text
    for needle in ('id="run-form"', 'id="config-text"', 'id="config-file"', 'id="load-config"', 'id="submit-button"'):
        assert needle in html
    assert "/static/js/new_run.js" in scripts_of(html)
    cloned = client.get("/runs/new", params={"clone": 3})
    assert cloned.status_code == 200
    assert 'data-clone="3"' in cloned.text


def test_run_page(client: TestClient, settings: Settings) -> None:
    run_id = add_run(settings, "sentiment vs brevity")
    response = client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    html = response.text
    for needle in (
        f'data-run-id="{run_id}"',
        'id="run-status"',
        'id="stop-button"',
        'id="resume-button"',
        'id="chart-weights"',
        'id="chart-rewards"',
        'id="chart-losses"',
        'id="chart-accept"',
        'id="chart-throughput"',
        'id="chart-front"',
        'id="chart-hypervolume"',
        'id="sample-step"',
        'id="smoothing"',
        "sentiment vs brevity",
        ">queued<",
    ):
        assert needle in html, needle
    assert scripts_of(html) == ["/static/js/session.js", "/vendor/uplot/uPlot.iife.min.js", "/static/js/run.js"]


def test_compare_page(client: TestClient, settings: Settings) -> None:
    a, b = add_run(settings, "a"), add_run(settings, "b")
    html = client.get("/compare", params={"ids": f"{a},{b},x,{a}"}).text
    assert f'data-ids="{a},{b}"' in html
    for needle in ('id="compare-rewards"', 'id="compare-weights"', 'id="compare-hypervolume"', 'id="config-diff"'):
        assert needle in html
    assert 'id="hide-identical"' in html
    assert client.get("/compare").status_code == 200


def test_assets_are_served(client: TestClient) -> None:
    for path in (
        "/static/css/app.css",
        "/static/js/common.js",
        "/static/js/charts.js",
        "/static/js/runs.js",
        "/static/js/new_run.js",
        "/static/js/run.js",
        "/static/js/compare.js",
        "/vendor/uplot/uPlot.iife.min.js",
        "/vendor/uplot/uPlot.min.css",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.content, path


def test_static_js_never_writes_html() -> None:
    """Untrusted text reaches the page through textContent / text nodes only."""
    static = Path(__file__).resolve().parent.parent / "app" / "static" / "js"
    for path in static.glob("*.js"):
        text = path.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
            assert sink not in text, f"{path.name} uses {sink}"


def test_run_name_is_escaped(client: TestClient, settings: Settings) -> None:
    run_id = add_run(settings, EVIL)
    html = client.get(f"/runs/{run_id}").text
    assert EVIL not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # The JSON API hands the name back verbatim; the runs page renders it with textContent.
    assert client.get(f"/api/runs/{run_id}").json()["name"] == EVIL
    assert EVIL not in client.get("/").text


def test_unknown_run_is_404(client: TestClient) -> None:
    response = client.get("/runs/999")
    assert response.status_code == 404
    assert "There is no run 999" in response.text
    assert client.get("/api/runs/999").status_code == 404


def test_parse_yaml_config(client: TestClient) -> None:
    text = """
model:
  device: cpu
objectives:
  - {name: positivity, type: sentiment}
  - name: short
    type: brevity
    unit: characters
iterations: 12
"""
    response = client.post("/api/config/parse", json={"text": text})
    assert response.status_code == 200, response.text
    config = response.json()
    assert config["model"]["device"] == "cpu"
    assert config["iterations"] == 12
    assert [o["type"] for o in config["objectives"]] == ["sentiment", "brevity"]
    assert config["objectives"][1]["unit"] == "characters"
    # Omitted fields take the defaults: the result is the whole config, as GET /api/config/defaults gives it.
    assert config["algorithm"] == client.get("/api/config/defaults").json()["algorithm"]
    # JSON is YAML too.
    assert client.post("/api/config/parse", json={"text": '{"seed": 3}'}).json()["seed"] == 3


def test_parse_config_errors_name_the_field(client: TestClient) -> None:
    response = client.post(
        "/api/config/parse",
        json={"text": "algorithm:\n  temperature: -1\nobjectives:\n  - {name: Bad, type: sentiment}\n"},
    )
    assert response.status_code == 422
    locs = {tuple(item["loc"]) for item in response.json()["detail"]}
    assert ("body", "config", "algorithm", "temperature") in locs
    assert ("body", "config", "objectives", "0", "name") in locs

    typo = client.post("/api/config/parse", json={"text": "model:\n  devcie: cpu\n"})
    assert typo.status_code == 422
    assert [item["loc"] for item in typo.json()["detail"]] == [["body", "config", "model", "devcie"]]

    broken = client.post("/api/config/parse", json={"text": "model: [unclosed\n"})
    assert broken.status_code == 422
    (item,) = broken.json()["detail"]
    assert item["loc"] == ["body", "text"]
    assert "YAML" in item["msg"]

    not_mapping = client.post("/api/config/parse", json={"text": "- 1\n- 2\n"})
    assert not_mapping.status_code == 422
    assert not_mapping.json()["detail"][0]["loc"] == ["body", "text"]

    assert client.post("/api/config/parse", json={}).status_code == 422
