"""All settings of the server and the workers, from the environment (prefix MEAL_) or a .env file."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEAL_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Embedded mode keeps its SQLite files and run folders here.")
    database_url: str = Field("", description="SQLAlchemy URL; default: SQLite file in data_dir.")
    broker_url: str = Field("", description="Celery broker; default: SQLite broker file in data_dir.")
    runs_dir: Path = Field(
        Path(""),
        description="Run folders (checkpoints, config) on this machine; default: data_dir/runs. With an artefact "
        "store, the cache of what this machine used from it.",
    )
    artifacts_url: str = Field(
        "",
        max_length=2000,
        description="The artefact store every machine reads and writes run folders and checkpoints in: a folder, or "
        "s3://bucket/prefix (endpoint and keys from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY). "
        "Default: none, runs_dir is the store (one machine).",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    heartbeat_interval_s: float = Field(5.0, gt=0)
    heartbeat_timeout_s: float = Field(120.0, gt=0, description="A running run with no heartbeat this long failed.")
    playground_timeout_s: float = Field(
        600.0, gt=0, description="A playground generation still running this long after it was asked for failed."
    )
    export_timeout_s: float = Field(
        3600.0, gt=0, description="A model export still running this long after it was asked for failed."
    )
    recorder_flush_s: float = Field(0.5, gt=0, description="Worker flushes buffered metrics at least this often.")
    events_poll_s: float = Field(0.5, gt=0, description="How often a run's event feed looks for new rows.")
    events_shared: bool = Field(
        True,
        description="One poller per run for all its viewers (app/event_hub.py). False polls once per viewer: the "
        "reference that bench/events_load.py measures against.",
    )
    max_chart_points: int = Field(5000, ge=10, description="Upper bound on max_points of a metrics query.")
    max_runs_listed: int = Field(500, ge=1)
    mode: Literal["embedded", "deployed"] = Field(
        "embedded",
        description="embedded (`meal up`): a random secret kept in data_dir, the first admin gets a one-time login "
        "link. deployed: MEAL_SECRET_KEY is required and the first admin comes from MEAL_ADMIN_NAME/_PASSWORD.",
    )
    secret_key: SecretStr = Field(
        SecretStr(""), description="Keys the stored hashes of sessions, API tokens and login links."
    )
    admin_name: str = Field("", description="Deployed mode: the first admin, created at start if no user exists.")
    admin_password: SecretStr = Field(SecretStr(""), description="…and that admin's password.")
    allowed_hosts: list[str] = Field(
        ["localhost", "127.0.0.1"],
        description="Host names the server answers to (and MEAL_HOST); any other Host header gets a 400, so that a "
        'page on another site cannot reach the API through DNS rebinding. JSON list, e.g. ["meal.example.org"].',
    )
    allowed_roots: list[Path] = Field(
        [],
        description="Folders, besides the data folder's uploads/, that configs may name files and models in (JSON "
        "list). The server's own files (database, broker, secret key, .env, run folders) are refused wherever they "
        "lie.",
    )
    allow_python_objectives: bool = Field(
        False, description="Let admins launch runs with `python` objectives (code from the server's Python path)."
    )
    allow_remote_code: bool = Field(
        False, description="Let admins launch runs with trust_remote_code (code shipped with a model)."
    )
    max_body_bytes: int = Field(2_000_000, ge=1024, description="Larger request bodies get a 413.")
    max_metric_keys: int = Field(100, ge=1, description="Keys one metrics query may ask for.")
    max_header_bytes: int = Field(
        65_536, ge=4096, description="Request line and headers together; a larger head gets a 431 (app/server.py)."
    )
    max_headers: int = Field(100, ge=10, description="Request headers one request may carry; more get a 431.")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's headers must arrive within this many seconds of the connection opening (or of "
        "their first byte on a kept-alive connection); a slower or silent client is disconnected.",
    )
    keep_alive_s: int = Field(5, ge=1, description="An idle kept-alive connection is closed after this many seconds.")
    max_connections: int = Field(
        1000, ge=10, description="Open connections (event streams included) beyond which new requests get a 503."
    )
    forwarded_allow_ips: list[str] = Field(
        [],
        description="Addresses (or CIDR ranges) of the reverse proxies whose X-Forwarded-For and X-Forwarded-Proto "
        "are believed (JSON list). Default: none, the client is the connection's peer.",
    )
    cookie_secure: bool | None = Field(
        None, description="Mark the session cookie Secure; default: when the request came over https."
    )

    @model_validator(mode="after")
    def _defaults_in_data_dir(self) -> Settings:
        data = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'meal.sqlite'}"
        if not self.broker_url:
            self.broker_url = f"sqla+sqlite:///{data / 'broker.sqlite'}"
        if self.runs_dir == Path(""):
            self.runs_dir = data / "runs"
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
