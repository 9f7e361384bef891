"""Hostile input, probed as an attacker would: every answer a 4xx naming the problem, never a 500 or a hang."""

from __future__ import annotations

import json
import time
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers import bearer, tiny_run_config
from live_server import live_server
from pydantic import BaseModel

from app.main import create_app
from app.store.settings import Settings
from meal_core.config import ObjectiveConfig, RunConfig

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(12)
)


@pytest.fixture()
def app(embedded_settings: Settings):  # type: ignore[no-untyped-def]
    return create_app(embedded_settings)


@pytest.fixture()
def trainer(app, embedded_settings: Settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, headers=bearer(embedded_settings, "trainer")) as client:
        yield client


def fields(response: httpx.Response) -> list[str]:
    """The dotted config fields a 4xx names."""
    return [".".join(str(p) for p in item["loc"][2:]) for item in response.json()["detail"]]


def config_with(**changes: object) -> dict[str, object]:
    data = RunConfig().model_dump(mode="json")
    for dotted, value in changes.items():
        *path, leaf = dotted.split("__")
        node = data
        for part in path:
            node = node[part]  # type: ignore[assignment]
        node[leaf] = value  # type: ignore[index]
    return data


def test_a_yaml_alias_bomb_is_refused_at_once(trainer: TestClient) -> None:
    assert len(ALIAS_BOMB) < 1000  # expanded, it would be 9 × 5^12 ≈ 2 billion strings
    response = trainer.post("/api/config/parse", json={"text": ALIAS_BOMB})  # expanded, it would not return
    assert response.status_code == 422 and "aliases" in response.text
    assert len(response.content) < 2000


def test_bodies_over_the_limit_get_413(trainer: TestClient, embedded_settings: Settings) -> None:
    big = "x" * (embedded_settings.max_body_bytes + 1)
    declared = trainer.post(
        "/api/config/parse", content=json.dumps({"text": big}), headers={"content-type": "application/json"}
    )
    assert declared.status_code == 413 and "request body over" in declared.text, declared.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"text": "'
        for _ in range(embedded_settings.max_body_bytes // 100_000 + 2):
            yield b"y" * 100_000
        yield b'"}'

    with live_server(embedded_settings) as base:  # a real server: the body arrives chunked, over a socket
        streamed = httpx.post(
            f"{base}/api/config/parse",
            content=chunks(),
            headers={**trainer.headers, "content-type": "application/json"},
            timeout=30,
        )
    assert streamed.status_code == 413, streamed.text


def test_config_limits_name_the_field_and_never_echo_the_input(trainer: TestClient) -> None:
    cases = {
        "model__name_or_path": ("m" * 5000, "model.name_or_path"),
        "lora__target_modules": (["q_proj"] * 100, "lora.target_modules"),
        "eval__reference_point": ([0.0] * 100, "eval.reference_point"),
        "seed": (2**70, "seed"),  # the trainer's torch seeds must stay under 2**64
    }
    for path, (value, field) in cases.items():
        response = trainer.post("/api/runs", json={"name": "x", "config": config_with(**{path: value})})
        assert response.status_code == 422, (path, response.text)
        assert field in fields(response) and len(response.content) < 3000  # the input is not sent back
    too_long_name = trainer.post("/api/runs", json={"name": "n" * 10_000, "config": {}})
    assert too_long_name.status_code == 422 and "n" * 300 not in too_long_name.text


def test_nan_and_infinity_in_a_config_are_refused(trainer: TestClient) -> None:
    for value in ("NaN", "Infinity", "-Infinity"):
        body = '{"name": "x", "config": {"eval": {"temperature": ' + value + "}}}"
        response = trainer.post("/api/runs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text
    parsed = trainer.post("/api/config/parse", json={"text": "algorithm:\n  policy_lr: .nan\n"})
    assert parsed.status_code == 422 and fields(parsed) == ["algorithm.policy_lr"]


def test_a_lone_surrogate_is_a_422(trainer: TestClient) -> None:
    for body in ('{"name": "\\ud800", "config": {}}', '{"name": 5, "config": {"seed": "\\udfff"}}'):
        response = trainer.post("/api/runs", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 422, response.text


def test_ids_beyond_any_database_are_a_422_not_a_500(trainer: TestClient) -> None:
    huge = str(2**64)
    for method, path in [
        ("GET", f"/api/runs/{huge}"),
        ("POST", f"/api/runs/{huge}/stop"),
        ("GET", f"/api/runs/{huge}/metrics"),
        ("GET", f"/api/runs/{huge}/events"),
        ("GET", f"/api/runs/{huge}/samples"),
        ("GET", f"/api/runs/{huge}/evaluations"),
        ("GET", f"/api/review/queues/{huge}"),
        ("GET", f"/api/playground/{huge}"),
        ("GET", "/api/runs/-1"),
    ]:
        assert trainer.request(method, path).status_code == 422, path


def test_config_text_too_deeply_nested_or_with_too_long_a_number_is_a_422(trainer: TestClient) -> None:
    for text, problem in [
        ("[" * 100_000, "nested more than"),  # would exhaust the parser's recursion
        ("- " * 50_000, "nested more than"),
        ('{"a": ' * 1000 + "1" + "}" * 1000, "nested more than"),
        ("seed: " + "9" * 5000, "integer too long"),  # over Python's int conversion limit
    ]:
        response = trainer.post("/api/config/parse", json={"text": text})
        assert response.status_code == 422, (text[:20], response.text)
        [item] = response.json()["detail"]
        assert item["loc"] == ["body", "text"] and problem in item["msg"] and len(response.content) < 2000


def test_a_sample_step_beyond_any_database_is_a_422(trainer: TestClient, embedded_settings: Settings) -> None:
    from app.store import run_state
    from app.store.db import session_scope

    with session_scope(embedded_settings.database_url) as session:
        run_id = run_state.create_run(session, "r", {}, 1, "t").id
    for step in (2**31, 2**63, 2**64):
        assert trainer.get(f"/api/runs/{run_id}/samples", params={"step": step}).status_code == 422


def test_nul_characters_are_refused_where_the_database_cannot_store_them(database_url: str, tmp_path: Path) -> None:
    """PostgreSQL stores NUL in no text or JSONB column (SQLite does): whatever carries one is a 422 there, never
    a 500."""
    from app.store import run_state
    from app.store.db import session_scope

    settings = Settings(data_dir=tmp_path, database_url=database_url, broker_url=f"sqla+sqlite:///{tmp_path / 'b'}")
    with session_scope(settings.database_url) as session:
        run_id = run_state.create_run(session, "r", {}, 1, "t").id
    requests = [
        ("GET", "/api/runs?status=%00", None),
        ("GET", f"/api/runs/{run_id}/metrics?keys=a%00", None),
        ("PATCH", "/api/users/a%00", {}),
        ("POST", "/api/auth/login", {"name": "\x00", "password": "x"}),
        ("POST", "/api/tokens", {"label": "a\x00"}),
        ("POST", "/api/runs", {"name": "a\x00", "config": {}}),
        ("POST", "/api/runs", {"name": "a", "config": {"data": {"train_prompts": "builtin:train\x00"}}}),
        ("POST", "/api/playground", {"run_id": run_id, "prompt": "a\x00", "weights": ["auto"]}),
    ]
    with TestClient(create_app(settings), headers=bearer(settings, "admin")) as admin:
        for method, path, body in requests:
            response = admin.request(method, path, json=body)
            assert response.status_code < 500, (method, path, body, response.text)
            if database_url.startswith("postgresql"):
                assert response.status_code == 422 and "NUL" in response.text, (method, path, body, response.text)


def test_pages_with_odd_ids(app, embedded_settings: Settings) -> None:  # type: ignore[no-untyped-def]
    from helpers import session_cookie

    from app.auth import SESSION_COOKIE

    cookie, _ = session_cookie(embedded_settings)
    with TestClient(app, cookies={SESSION_COOKIE: cookie}) as browser:
        assert browser.get(f"/runs/{2**64}").status_code == 422
        for ids in ("²", "1,²,3", "9" * 500, ",,,", "1e5"):
            assert browser.get("/compare", params={"ids": ids}).status_code == 200, ids
        assert browser.get("/runs/new", params={"clone": str(2**64)}).status_code == 422


def test_metrics_keys_are_capped(trainer: TestClient, embedded_settings: Settings) -> None:
    from app.store import run_state
    from app.store.db import session_scope

    with session_scope(embedded_settings.database_url) as session:
        run_id = run_state.create_run(session, "r", {}, 1, "t").id
    keys = ",".join(f"k{i}" for i in range(embedded_settings.max_metric_keys + 1))
    response = trainer.get(f"/api/runs/{run_id}/metrics", params={"keys": keys})
    assert response.status_code == 422 and "at most" in response.text
    assert trainer.get(f"/api/runs/{run_id}/metrics", params={"keys": "k" * 200}).status_code == 422


def test_the_runs_list_leaves_configs_out(trainer: TestClient, embedded_settings: Settings) -> None:
    from app.store import run_state
    from app.store.db import session_scope

    with session_scope(embedded_settings.database_url) as session:
        config = {"objectives": [{"name": "a"}, {"name": "b"}], "model": {"name_or_path": "m" * 400}}
        run_id = run_state.create_run(session, "r", config, 1, "t").id
    listed = next(r for r in trainer.get("/api/runs").json() if r["id"] == run_id)
    assert "config" not in listed and listed["objectives"] == ["a", "b"]
    assert "config" in trainer.get(f"/api/runs/{run_id}").json()


def test_configs_stay_under_the_allowed_folders(
    trainer: TestClient, embedded_settings: Settings, tmp_path: Path
) -> None:
    outside = {
        "data__train_prompts": ("/etc/passwd", "data.train_prompts"),
        "data__eval_prompts": ("../../../../etc/hosts", "data.eval_prompts"),
        "model__name_or_path": ("/usr/lib", "model.name_or_path"),
    }
    for path, (value, field) in outside.items():
        response = trainer.post("/api/runs", json={"name": "x", "config": config_with(**{path: value})})
        assert response.status_code == 422 and fields(response) == [field] and "outside" in response.text
    objective = {"name": "mine", "type": "hf_classifier", "model": "/opt/elsewhere/model"}
    response = trainer.post(
        "/api/runs", json={"name": "x", "config": config_with(objectives=[objective, {"name": "b", "type": "brevity"}])}
    )
    assert response.status_code == 422 and fields(response) == ["objectives.0.model"]


def test_code_from_configs_needs_an_operator_and_an_admin(embedded_settings: Settings, api_broker_url: str) -> None:
    python = config_with(
        objectives=[{"name": "a", "type": "python", "function": "os:system"}, {"name": "b", "type": "brevity"}]
    )
    remote = config_with(model__trust_remote_code=True)
    off = create_app(embedded_settings.model_copy(update={"broker_url": api_broker_url}))
    with TestClient(off, headers=bearer(embedded_settings, "admin")) as admin:
        for config, field in ((python, "objectives.0.function"), (remote, "model.trust_remote_code")):
            response = admin.post("/api/runs", json={"name": "x", "config": config})
            assert response.status_code == 422 and fields(response) == [field] and "off on this server" in response.text
    enabled = embedded_settings.model_copy(
        update={"allow_python_objectives": True, "allow_remote_code": True, "broker_url": api_broker_url}
    )
    on = create_app(enabled)
    with TestClient(on, headers=bearer(embedded_settings, "trainer")) as trainer:
        assert trainer.post("/api/runs", json={"name": "x", "config": python}).status_code == 403
    with TestClient(on, headers=bearer(embedded_settings, "admin")) as admin:
        assert admin.post("/api/runs", json={"name": "x", "config": remote}).status_code == 201


def test_only_configured_hosts_are_served_and_every_answer_has_security_headers(app) -> None:  # type: ignore[no-untyped-def]
    with TestClient(app) as client:
        assert client.get("/healthz", headers={"host": "attacker.example"}).status_code == 400
        response = client.get("/login")
        assert response.status_code == 200
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert "<script>" not in response.text  # no inline script: the CSP would block it
        assert client.get("/api/auth/me").headers["x-frame-options"] == "DENY"


def test_a_huge_last_event_id_starts_the_stream_from_the_beginning(
    embedded_settings: Settings, tiny_model_dir: Path
) -> None:
    from app.store import run_state
    from app.store.db import session_scope

    with session_scope(embedded_settings.database_url) as session:
        run_id = run_state.create_run(session, "r", tiny_run_config(tiny_model_dir).model_dump(mode="json"), 1, "t").id
    headers = bearer(embedded_settings)
    with live_server(embedded_settings) as base:
        for last in ("9" * 5000 + ".1.1.1", "1.2.3", "-1.-1.-1.-1", f"{2**70}.0.0.0"):
            with httpx.stream(
                "GET", f"{base}/api/runs/{run_id}/events", headers={**headers, "Last-Event-ID": last}, timeout=10
            ) as response:
                assert response.status_code == 200
                first = next(line for line in response.iter_lines() if line.startswith("event:"))
                assert first == "event: status"


def test_a_broker_error_does_not_stick(embedded_settings: Settings, tmp_path: Path) -> None:
    """A broker that was down once: requests answer 503 while it is down, and 201 again once it is back, without
    restarting the web server; the stored error is short (no broker internals)."""
    import shutil
    import socket
    import subprocess

    redis_server = shutil.which("redis-server")
    assert redis_server, "redis-server is needed (the project's CI machine has it)"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return process
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    settings = embedded_settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"})
    server = start()
    try:
        with TestClient(create_app(settings), headers=bearer(settings)) as client:
            assert client.post("/api/runs", json={"name": "up", "config": {}}).status_code == 201
            server.terminate()
            server.wait(10)
            down = client.post("/api/runs", json={"name": "down", "config": {}})
            assert down.status_code == 503 and "broker unavailable" in down.text
            failed = next(r for r in client.get("/api/runs").json() if r["name"] == "down")
            assert failed["status"] == "failed" and len(failed["error"]) < 100
            server = start()
            assert client.post("/api/runs", json={"name": "back", "config": {}}).status_code == 201
    finally:
        server.terminate()
        server.wait(10)


def test_every_number_of_a_config_has_bounds() -> None:
    """A config is untrusted input that sizes the worker's memory: every number has a lower and an upper bound."""
    unbounded = []

    def visit(model: type[Any], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            nested = [a for a in typing.get_args(annotation) or (annotation,) if isinstance(a, type)]
            for kind in nested:
                if issubclass(kind, BaseModel):
                    visit(kind, f"{prefix}{name}.")
            if not any(kind in (int, float) for kind in nested) or any(kind is bool for kind in nested):
                continue
            constraints = {type(m).__name__ for m in field.metadata}
            if not ({"Ge", "Gt"} & constraints and {"Le", "Lt"} & constraints):
                unbounded.append(f"{prefix}{name}")

    visit(RunConfig, "")
    for objective in typing.get_args(typing.get_args(ObjectiveConfig)[0]):
        visit(objective, f"objectives[{objective.__name__}].")
    assert unbounded == []
