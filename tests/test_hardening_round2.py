"""Hostile input, second round (issue 18): what an outside probe still got through after the first one. Each test
failed on the code before its fix."""

from __future__ import annotations

import json
import typing
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import bearer

from app.main import create_app
from app.store import run_state
from app.store.db import session_scope
from app.store.settings import Settings


@pytest.fixture()
def trainer(embedded_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(embedded_settings), headers=bearer(embedded_settings, "trainer")) as client:
        yield client


def fields(response: httpx.Response) -> list[str]:
    """The dotted config fields a 4xx names."""
    return [".".join(str(p) for p in item["loc"][2:]) for item in response.json()["detail"]]


def launch(client: TestClient, config: dict[str, object]) -> httpx.Response:
    return client.post("/api/runs", json={"name": "probe", "config": config})


def stored_run(settings: Settings, config: dict[str, object]) -> int:
    """A run stored as an older version would have, without today's checks."""
    with session_scope(settings.database_url) as session:
        return run_state.create_run(session, "old", config, 1, "trainer").id


# -- paths: under the roots for users' files, never the server's own ------------------------------------------------


def test_configs_cannot_name_the_server_s_own_files_even_under_an_allowed_root(
    trainer: TestClient, embedded_settings: Settings
) -> None:
    data = embedded_settings.data_dir.resolve()
    # The tests' MEAL_ALLOWED_ROOTS is the temporary folder, which holds this data folder: before, every file in it
    # was allowed, the secret and the databases included.
    assert any(data.is_relative_to(Path(root).resolve()) for root in embedded_settings.allowed_roots)
    launched = launch(trainer, {})  # writes the broker's database; the secret exists since the app started
    assert launched.status_code == 201
    run_folder = embedded_settings.runs_dir / str(launched.json()["id"])
    run_folder.mkdir(parents=True, exist_ok=True)
    (run_folder / "config.json").write_text("{}")
    uploads = data / "uploads"
    uploads.mkdir()
    (uploads / "link.txt").symlink_to(data / "secret.key")
    own = [
        data / "secret.key",
        data / "meal.sqlite",
        data / "meal.sqlite-wal",
        data / "broker.sqlite",
        data / "broker.sqlite-wal",
        run_folder / "config.json",
        embedded_settings.runs_dir,
        data,
        data / "anything-else.txt",
        uploads / "link.txt",  # a link is what it points to
        uploads / ".." / "secret.key",
    ]
    assert (data / "secret.key").is_file() and (data / "broker.sqlite").is_file()
    for path in own:
        for field in ("train_prompts", "eval_prompts"):
            response = launch(trainer, {"data": {field: str(path)}})
            assert response.status_code == 422 and fields(response) == [f"data.{field}"], (path, response.text)
    from huggingface_hub import constants

    hub_token = Path(constants.HF_TOKEN_PATH)
    with pytest.MonkeyPatch.context() as patch:  # the operator's hub token, under a listed root
        patch.setattr(constants, "HF_TOKEN_PATH", str(data.parent / "hf" / "token"))
        response = launch(trainer, {"data": {"eval_prompts": constants.HF_TOKEN_PATH}})
        assert response.status_code == 422 and "server's own" in response.text, response.text
    assert Path(constants.HF_TOKEN_PATH) == hub_token
    response = launch(trainer, {"model": {"name_or_path": str(embedded_settings.runs_dir / "1")}})
    assert response.status_code == 422 and fields(response) == ["model.name_or_path"]
    objectives = [
        {"name": "a", "type": "hf_classifier", "model": str(run_folder)},
        {"name": "b", "type": "relevance", "model_path": str(data / "meal.sqlite")},
    ]
    response = launch(trainer, {"objectives": objectives})
    assert response.status_code == 422 and fields(response) == ["objectives.0.model"]
    response = launch(trainer, {"objectives": [{"name": "a", "type": "brevity"}, objectives[1]]})
    assert response.status_code == 422 and fields(response) == ["objectives.1.model_path"]
    # What the uploads folder holds is the users' own.
    (uploads / "mine.txt").write_text("How do I keep basil alive?\n")
    assert launch(trainer, {"data": {"eval_prompts": str(uploads / "mine.txt")}}).status_code == 201


def test_the_prompts_of_a_run_never_read_out_server_files_or_binary_ones(
    trainer: TestClient, embedded_settings: Settings
) -> None:
    data = embedded_settings.data_dir.resolve()
    secret = (data / "secret.key").read_text().strip()
    assert launch(trainer, {}).status_code == 201  # the broker's database and its sidecars exist now
    uploads = data / "uploads"
    uploads.mkdir()
    (uploads / "pages.txt").write_bytes((data / "meal.sqlite").read_bytes())
    (uploads / "pages.jsonl").write_bytes(b"\x00\x01\xff\xfe" * 100)
    (uploads / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    for spec in [
        data / "secret.key",
        data / "meal.sqlite",
        data / "broker.sqlite",
        data / "broker.sqlite-wal",
        uploads / "pages.txt",
        uploads / "pages.jsonl",
        uploads / "latin1.jsonl",
    ]:
        run_id = stored_run(embedded_settings, {"data": {"eval_prompts": str(spec)}})
        response = trainer.get(f"/api/runs/{run_id}/prompts")
        assert response.status_code == 422 and "data.eval_prompts" in response.text, (spec, response.text)
        assert secret not in response.text
    (uploads / "mine.txt").write_text("How do I keep basil alive?\n")
    run_id = stored_run(embedded_settings, {"data": {"eval_prompts": str(uploads / "mine.txt")}})
    assert trainer.get(f"/api/runs/{run_id}/prompts").json() == ["How do I keep basil alive?"]


def test_a_run_stored_before_the_policy_is_not_resumed_onto_the_server_s_files(
    trainer: TestClient, embedded_settings: Settings
) -> None:
    data = embedded_settings.data_dir.resolve()
    (data / "uploads").mkdir()
    (data / "uploads" / "mine.txt").write_text("a prompt\n")
    runs = {}
    for name, spec in (("secret", data / "secret.key"), ("mine", data / "uploads" / "mine.txt")):
        runs[name] = stored_run(embedded_settings, {"data": {"train_prompts": str(spec)}})
        with session_scope(embedded_settings.database_url) as session:
            assert run_state.enqueue_failed(session, runs[name], "failed once")
    refused = trainer.post(f"/api/runs/{runs['secret']}/resume")
    assert refused.status_code == 422 and fields(refused) == ["data.train_prompts"], refused.text
    assert trainer.get(f"/api/runs/{runs['secret']}").json()["status"] == "failed"  # left as it was
    assert trainer.post(f"/api/runs/{runs['mine']}/resume").status_code == 200


# -- NUL bytes --------------------------------------------------------------------------------------------------------


NUL_FIELDS = {
    "data.train_prompts": {"data": {"train_prompts": "/tmp/a\x00b"}},
    "data.eval_prompts": {"data": {"eval_prompts": "org/name\x00"}},
    "model.name_or_path": {"model": {"name_or_path": "/tmp/model\x00"}},
    "objectives.0.model": {"objectives": [{"name": "a", "type": "hf_classifier", "model": "/m\x00"}]},
    "objectives.0.model_path": {"objectives": [{"name": "a", "type": "relevance", "model_path": "x\x00y"}]},
    # the other strings of a config
    "model.device": {"model": {"device": "cpu\x00"}},
    "lora.target_modules": {"lora": {"target_modules": ["q_proj\x00"]}},
    "data.train_split": {"data": {"train_split": "train\x00"}},
    "data.prompt_column": {"data": {"prompt_column": "prompt\x00"}},
    "objectives.0.separator": {
        "objectives": [{"name": "a", "type": "hf_classifier", "model": "m", "separator": "\x00"}]
    },
    "objectives.0.function": {"objectives": [{"name": "a", "type": "python", "function": "os:sys\x00tem"}]},
}


@pytest.mark.parametrize("field", list(NUL_FIELDS))
def test_a_nul_byte_in_any_config_string_is_a_422_naming_the_field(trainer: TestClient, field: str) -> None:
    config = NUL_FIELDS[field]
    response = launch(trainer, config)
    assert response.status_code == 422 and field in fields(response), response.text
    assert "NUL" in response.text or "pattern" in response.text  # a field with a pattern refuses it first
    parsed = trainer.post("/api/config/parse", json={"text": json.dumps(config)})
    assert parsed.status_code == 422 and field in fields(parsed), parsed.text


def test_is_hub_id_takes_any_text() -> None:
    from meal_core.data import is_hub_id

    assert is_hub_id("org/name")
    assert not is_hub_id("org/name\x00") and not is_hub_id("org\x00/name") and not is_hub_id("org/name\n")


# -- YAML: the 1.2 core schema, bounded ------------------------------------------------------------------------------


def test_yaml_sexagesimals_are_strings_not_a_500_or_quadratic_time(trainer: TestClient) -> None:
    overflowing = "seed: " + ":".join(["1"] * 200) + ".5"  # YAML 1.1: a float of 60^199, an OverflowError
    response = trainer.post("/api/config/parse", json={"text": overflowing})
    assert response.status_code == 422 and fields(response) == ["seed"], response.text
    assert trainer.post("/api/config/parse", json={"text": "seed: 1:30"}).status_code == 422  # not 90
    # YAML 1.1 read these as base-60 numbers, in quadratic time (0.56 s at 30k parts, 18.5 s at 180k); 1.2 core
    # reads a string, which the integer field refuses. Tests never time themselves: the answers are the check.
    for parts in (30_000, 49_000):
        response = trainer.post("/api/config/parse", json={"text": "seed: " + ":".join(["1"] * parts)})
        assert response.status_code == 422 and fields(response) == ["seed"]
        assert "should be a valid integer" in response.text, response.text[:300]
    response = trainer.post("/api/config/parse", json={"text": "seed: " + ":".join(["1"] * 180_000)})
    assert response.status_code == 422 and "at most 100000" in response.text
    assert len(response.content) < 2000


def test_yaml_follows_the_1_2_core_schema() -> None:
    from meal_core.config import ConfigError, parse_config_text

    read = parse_config_text("a: 017\nb: 0o17\nc: 0x1F\nd: yes\ne: true\nf: 1_000\ng: 2001-12-14\nh: 1e999\ni: ~")
    assert read == {
        "a": 17,
        "b": 15,
        "c": 31,
        "d": "yes",
        "e": True,
        "f": "1_000",
        "g": "2001-12-14",
        "h": 1e999,
        "i": None,
    }
    with pytest.raises(ConfigError, match="not a YAML 1.2 integer"):
        parse_config_text("a: !!int '1:30'")


def test_yaml_work_is_bounded_by_nodes_and_size() -> None:
    from meal_core.config import MAX_CONFIG_NODES, ConfigError, parse_config_text

    for text in ("a: [" + ",".join(["1"] * 49_000) + "]", "a: {" + ",".join(f"k{i}: 1" for i in range(8_000)) + "}"):
        with pytest.raises(ConfigError, match=f"more than {MAX_CONFIG_NODES} values"):  # counted, not timed
            parse_config_text(text)


# -- the page after logging in: this site only -----------------------------------------------------------------------

OFFSITE_NEXT = [
    "/\t/evil.example/phish",
    "/\n/evil.example/phish",
    "/\r/evil.example/phish",
    "//evil.example/phish",
    "/\\evil.example/phish",
    "\\\\evil.example/phish",
    "/\\/evil.example",
    "https://evil.example/phish",
    "javascript:alert(1)",
    " //evil.example",
    "/ /evil.example",
    "\t//evil.example",
    "http:/evil.example",
    "evil.example",
    "",
]


def test_the_next_page_after_login_is_a_path_on_this_site() -> None:
    from app.routers.pages import safe_next

    for value in OFFSITE_NEXT:
        assert safe_next(value) == "/", repr(value)
    for value in ("/", "/runs/3?tab=charts#weights", "/review/12", "/compare?ids=1,2"):
        assert safe_next(value) == value


def test_the_login_page_renders_only_a_safe_next(embedded_settings: Settings) -> None:
    with TestClient(create_app(embedded_settings)) as client:
        page = client.get("/login", params={"next": "/\t/evil.example/phish"}).text
        assert 'data-next="/"' in page and "evil.example" not in page
        assert 'data-next="/runs/3"' in client.get("/login", params={"next": "/runs/3"}).text


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="Chromium is not installed")
def test_chromium_stays_on_the_site_after_logging_in(embedded_settings: Settings, page: object) -> None:
    """The browser's own reading of `next`: before, /login?next=/%09/evil.example/phish sent Chromium to
    http://evil.example/phish. The server's check is bypassed here (the page is rendered with the raw value), so
    that the browser module's check is shown on its own."""
    import re
    from unittest import mock

    from helpers import ensure_user
    from live_server import live_server

    from app.routers import pages

    ensure_user(embedded_settings, "ana", "trainer", "ana's long password")
    offsite: list[str] = []

    def elsewhere(route: typing.Any) -> None:
        offsite.append(route.request.url)
        route.fulfill(status=200, body="phished", content_type="text/html")

    browser = typing.cast(typing.Any, page)
    browser.route(re.compile(r"^(?!http://127\.0\.0\.1:).*"), elsewhere)
    with mock.patch.object(pages, "safe_next", lambda value: value), live_server(embedded_settings) as base:
        for value in [
            "/\t/evil.example/phish",
            "/\n/evil.example/phish",
            "/\\evil.example",
            "//evil.example",
            "/review?x=1",  # a path on the site is kept
        ]:
            browser.goto("about:blank")  # no page of ours left to poll, be answered 401 and redirect meanwhile
            browser.context.clear_cookies()
            browser.goto(f"{base}/login?next={quote(value, safe='/')}")
            browser.fill("#login-name", "ana")
            browser.fill("#login-password", "ana's long password")
            browser.click("#login-button")
            browser.wait_for_url(re.compile(r"^http://127\.0\.0\.1:\d+/(review\?x=1)?$"))
    assert offsite == []


# -- validation errors: bounded, whatever the input ------------------------------------------------------------------


def test_validation_errors_neither_echo_nor_amplify_the_input(trainer: TestClient) -> None:
    huge_key = "k" * 1_900_000  # before: echoed whole in `loc`, a 1.9 MB answer
    response = launch(trainer, {huge_key: 1})
    assert response.status_code == 422 and len(response.content) < 2000, len(response.content)
    many = {f"key{i}": 1 for i in range(150_000)}  # before: a 14.4 MB answer after 9 s
    for config in (many, {"data": many}, {"objectives": [{"name": "a", "type": "brevity", **many}]}):
        response = launch(trainer, config)  # the answer's size is the check: tests never time themselves
        assert response.status_code == 422 and "150000 unknown keys" in response.text, response.text[:300]
        assert len(response.content) < 2000, len(response.content)
    # Up to MAX_ERRORS errors are each named; past them, counted.
    from meal_core.config import MAX_ERRORS

    wrong = {"data": {"max_rows": "x"}, "seed": "x", "iterations": "x", "lora": {f"k{i}": 1 for i in range(MAX_ERRORS)}}
    response = launch(trainer, wrong)
    named = fields(response)
    assert len(named) == MAX_ERRORS + 1 and response.json()["detail"][-1]["msg"] == "3 more errors not shown"


def test_request_validation_errors_are_capped_too(embedded_settings: Settings) -> None:
    from fastapi.exceptions import RequestValidationError

    from app.main import validation_details

    error = RequestValidationError([{"loc": ("body", "x" * 10_000, i), "msg": "m", "type": "t"} for i in range(5000)])
    details = validation_details(error)
    assert len(details) == 21 and details[-1]["msg"] == "4980 more errors not shown"
    assert all(len(part) <= 101 for item in details for part in map(str, item["loc"]))


# -- weights: finite, with a finite sum ------------------------------------------------------------------------------


def test_weights_whose_sum_overflows_are_a_422(trainer: TestClient, embedded_settings: Settings) -> None:
    from app.store.models import PlaygroundGeneration

    config = {"objectives": [{"name": "a", "type": "brevity"}, {"name": "b", "type": "coverage"}]}
    run_id = stored_run(embedded_settings, config)

    def generate(weights: str) -> httpx.Response:
        body = f'{{"run_id": {run_id}, "prompt": "hi", "weights": {weights}}}'
        return trainer.post("/api/playground", content=body, headers={"content-type": "application/json"})

    # Before: [[1e308, 1e308]] was a 201, stored as [[0, 0]] (each value over an infinite sum); the worker failed.
    for weights in ("[[1e308, 1e308]]", "[[1e309, 1]]", "[[NaN, 1]]", "[[Infinity, 0]]", "[[-1, 2]]", "[[0, 0]]"):
        response = generate(weights)
        assert response.status_code == 422 and "weights" in response.text, (weights, response.text)
    for weights, stored in (("[[1e308, 0]]", [1.0, 0.0]), ("[[5e-324, 5e-324]]", [0.5, 0.5]), ('["auto"]', "auto")):
        response = generate(weights)
        assert response.status_code == 201, (weights, response.text)
        with session_scope(embedded_settings.database_url) as session:
            generation = session.get(PlaygroundGeneration, response.json()["id"])
            assert generation is not None and generation.weights == [stored]
    # Other weight inputs: a config's reference point, a review queue's weight region.
    response = launch(trainer, {**config, "eval": {"reference_point": [1e308, 1e308]}})
    assert response.status_code == 422 and fields(response) == ["eval.reference_point.0", "eval.reference_point.1"]
    source = {"type": "samples", "run_id": run_id, "weight_objective": "a", "weight_min": 1e308}
    assert trainer.post("/api/review/queues", json={"name": "q", "source": source}).status_code == 422


def test_every_number_in_a_config_s_lists_has_bounds_too() -> None:
    """tests/test_hardening.py checks the numbers of a config; this, the numbers inside its lists (a reference point
    of 1e308 made every hypervolume inf)."""
    import typing

    from pydantic import BaseModel

    from meal_core.config import ObjectiveConfig, RunConfig

    unbounded = []

    def visit(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            for option in typing.get_args(field.annotation) or (field.annotation,):
                if isinstance(option, type) and issubclass(option, BaseModel):
                    visit(option, f"{prefix}{name}.")
                if typing.get_origin(option) is not list:
                    continue
                (item,) = typing.get_args(option)
                kind, *metadata = typing.get_args(item) or (item,)
                if kind in (int, float):
                    constraints = {type(m).__name__ for m in metadata for m in getattr(m, "metadata", [m])}
                    if not ({"Ge", "Gt"} & constraints and {"Le", "Lt"} & constraints):
                        unbounded.append(f"{prefix}{name}")

    visit(RunConfig, "")
    for objective in typing.get_args(typing.get_args(ObjectiveConfig)[0]):
        visit(objective, f"objectives[{objective.__name__}].")
    assert unbounded == []
