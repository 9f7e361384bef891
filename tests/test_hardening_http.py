"""What every HTTP answer says, whatever produced it: the security headers (the host check's 400, the body limit's
413, the server-error handler's 500 included), a 405's complete Allow list, and an OpenAPI schema as strict as the
server."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers import bearer

from app import auth
from app.main import create_app
from app.security import SECURITY_HEADERS
from app.store.settings import Settings


@pytest.fixture()
def app(embedded_settings: Settings) -> FastAPI:
    return create_app(embedded_settings)


def assert_secured(response: object, what: str) -> None:
    headers = response.headers  # type: ignore[attr-defined]
    missing = [name for name, value in SECURITY_HEADERS.items() if headers.get(name) != value]
    assert not missing, f"{what} ({response.status_code}) lacks {missing}"  # type: ignore[attr-defined]
    assert len(headers.get_list("content-security-policy")) == 1, what


def test_every_answer_carries_the_security_headers(app: FastAPI, embedded_settings: Settings) -> None:
    """Before: the 400, 413 and 500 answers came from outside the middleware that set them."""

    @app.get("/test-boom", include_in_schema=False)
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, headers=bearer(embedded_settings), raise_server_exceptions=False) as client:
        bad_host = client.get("/healthz", headers={"host": "attacker.example"})
        assert bad_host.status_code == 400
        assert_secured(bad_host, "bad Host")
        big = json.dumps({"text": "x" * (embedded_settings.max_body_bytes + 1)})
        too_big = client.post("/api/config/parse", content=big, headers={"content-type": "application/json"})
        assert too_big.status_code == 413
        assert_secured(too_big, "body over the limit")
        crashed = client.get("/test-boom")
        assert crashed.status_code == 500
        assert_secured(crashed, "server error")
        for path in ("/healthz", "/login", "/api/runs", "/api/runs/987654", "/static/favicon.svg", "/nowhere"):
            assert_secured(client.get(path), path)
        assert_secured(client.delete("/api/runs"), "405")
        assert_secured(client.post("/api/runs", content=b"{", headers={"content-type": "application/json"}), "422")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/api/runs", "GET, POST"),
        ("PUT", "/api/tokens", "GET, POST"),
        ("DELETE", "/api/users", "GET, POST"),
        ("PATCH", "/api/playground", "GET, POST"),
        ("DELETE", "/api/review/queues", "GET, POST"),
        ("POST", "/api/runs/5", "DELETE, GET, PATCH"),
        ("GET", "/api/tokens/5", "DELETE"),
        ("HEAD", "/healthz", "GET"),
    ],
)
def test_a_405_lists_every_method_of_its_path(
    app: FastAPI, embedded_settings: Settings, method: str, path: str, allowed: str
) -> None:
    """Before: `DELETE /api/runs` answered `Allow: GET` (the first route whose path matched), though POST is served."""
    with TestClient(app, headers=bearer(embedded_settings, "admin")) as client:
        response = client.request(method, path)
        assert response.status_code == 405
        assert response.headers["allow"] == allowed


def test_the_openapi_schema_is_as_strict_as_the_server(app: FastAPI, embedded_settings: Settings) -> None:
    """Before: a password of 1 character and a config with any keys were schema-valid, and the server refused
    them (1,133 schema-valid requests refused in a schemathesis run)."""
    with TestClient(app, headers=bearer(embedded_settings, "admin")) as client:
        schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            return components[node["$ref"].rsplit("/", 1)[1]]
        variants = [v for v in node.get("anyOf", []) if v.get("type") != "null"]
        return resolve(variants[0]) if variants else node

    for model, field in (("UserIn", "password"), ("PasswordIn", "new")):
        password = resolve(components[model]["properties"][field])
        assert password["minLength"] == auth.MIN_PASSWORD_LENGTH, (model, password)
    config = resolve(components["RunCreate"]["properties"]["config"])
    assert config["additionalProperties"] is False and "objectives" in config["properties"]
    assert resolve(config["properties"]["model"])["additionalProperties"] is False
    for name, definition in components.items():  # every config model refuses unknown keys
        if name.endswith(("Config", "Objective")) and definition.get("type") == "object":
            assert definition.get("additionalProperties") is False, name
    with TestClient(app, headers=bearer(embedded_settings, "admin")) as client:
        short = client.post("/api/users", json={"name": "jo", "role": "reviewer", "password": "short"})
        assert short.status_code == 422 and short.json()["detail"][0]["loc"] == ["body", "password"]
