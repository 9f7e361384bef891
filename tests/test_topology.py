"""The deployed topology of docker-compose.yml, run without Docker: PostgreSQL, Redis, `meal migrate`, `meal web`, two
training workers and a playground worker, each "machine" with a data folder of its own (nothing shared but the
database, the broker and the artefact store, an S3 protocol server). Two runs are launched; the worker training the
first is killed with SIGKILL mid-run; a replacement worker on a new machine, with an empty cache, resumes it from
the store. Every record is checked, and the playground, on yet another machine, samples the trained policy.

Commands and environment come from docker-compose.yml. What this test sets differs from a real deployment only in
addresses (a database, broker, store and port of the test's own), secrets, the data folder of each process, a node
name per worker (compose's containers each have their own host name), and pacing: a python objective that takes a
second per batch (so that the run is still training when the worker is killed; admins may launch it where the
operator allows it, MEAL_ALLOW_PYTHON_OBJECTIVES) and a 10 s heartbeat timeout instead of 120 s.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from db_fixtures import create_postgres_database, drop_postgres_database
from fault_helpers import HEARTBEAT_TIMEOUT_S, PACED, Panel, figures, paced_config, stored
from helpers import (
    BROWSER_WAIT_MS,
    MEAL,
    RedisServer,
    S3Server,
    ServiceProcess,
    free_port,
    wait_healthy,
    with_signal,
)

from app.store.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "admin"
TOTAL = 6  # iterations of each run


def interpolate(value: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error} against `variables` (what .env would hold)."""

    def one(match: re.Match[str]) -> str:
        name, op, rest = match.group(1), match.group(2), match.group(3)
        if variables.get(name):
            return variables[name]
        if op == ":?":
            raise AssertionError(f"compose needs {name}: {rest}")
        return rest if op == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value)


@dataclass
class Compose:
    """docker-compose.yml's services, read as compose would with `dotenv` as the .env file."""

    dotenv: dict[str, str]

    def service(self, name: str) -> dict[str, Any]:
        return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"][name])

    def command(self, name: str, *extra: str) -> list[str]:
        command = list(self.service(name)["command"])
        assert command[0] == "meal", command
        return [str(MEAL), *command[1:], *extra]

    def environment(self, name: str) -> dict[str, str]:
        environment: dict[str, str] = {}
        for key, value in self.service(name)["environment"].items():
            if value is None:  # passed through from .env when set there
                if key in self.dotenv:
                    environment[key] = self.dotenv[key]
            else:
                environment[key] = interpolate(str(value), self.dotenv)
        return environment


@dataclass
class Machine:
    """One host of the deployment: what compose's environment gives every service, with this host's addresses."""

    compose: Compose
    addresses: dict[str, str]  # where the database and broker are, as this test's machines reach them
    directory: Path
    started: list[ServiceProcess]

    def start(self, service: str, data_dir: str, *extra: str) -> ServiceProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("MEAL_", "AWS_"))}
        env.update(self.compose.environment(service))
        env.update(self.addresses)
        env.update(
            MEAL_DATA_DIR=str(self.directory / data_dir),
            MEAL_CACHE_DIR=os.environ.get("MEAL_CACHE_DIR", str(Path.home() / ".cache" / "meal-studio")),
            # pacing (see the module's docstring)
            MEAL_ALLOW_PYTHON_OBJECTIVES="true",
            MEAL_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_TIMEOUT_S),
            MEAL_HEARTBEAT_INTERVAL_S="1",
            MEAL_RECORDER_FLUSH_S="0.2",
            MEAL_ALLOWED_ROOTS=json.dumps([tempfile.gettempdir()]),  # the tiny model lives there
            PYTHONPATH=str(Path(__file__).parent),  # helpers:paced_letters
            OMP_NUM_THREADS="1",
            TRANSFORMERS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        process = ServiceProcess(self.compose.command(service, *extra), env, self.directory)
        process.start()
        self.started.append(process)
        return process

    def run_once(self, service: str) -> subprocess.CompletedProcess[str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("MEAL_", "AWS_"))}
        env.update({**self.compose.environment(service), **self.addresses})
        env["MEAL_DATA_DIR"] = str(self.directory / service)
        return subprocess.run(self.compose.command(service), env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def machines(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Machine]:
    redis, s3 = RedisServer(tmp_path), S3Server()
    redis.start()
    s3.start()
    database_url = create_postgres_database()
    dotenv = {
        "MEAL_SECRET_KEY": secrets.token_urlsafe(48),
        "MEAL_ADMIN_NAME": ADMIN,
        "MEAL_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "MEAL_ARTIFACTS_URL": s3.bucket(),
        **s3.env(),
    }
    addresses = {"MEAL_DATABASE_URL": database_url, "MEAL_BROKER_URL": redis.url(0)}
    machine = Machine(Compose(dotenv), addresses, tmp_path, [])
    yield machine
    for process in machine.started:
        process.stop()
    report = getattr(request.node, "report_call", None)
    if report is None or report.failed:
        for process in machine.started:
            print(f"---- {process.log_path.name}: {' '.join(process.command[1:3])} ----\n{process.output()[-6000:]}")
    redis.stop()
    s3.stop()
    drop_postgres_database(database_url)


def admin_token(machine: Machine) -> str:
    """`meal tokens create` against the deployment's database, as an operator would script it."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MEAL_", "AWS_"))}
    env.update({**machine.compose.environment("web"), **machine.addresses})
    result = subprocess.run(
        [str(MEAL), "tokens", "create", ADMIN, "--label", "topology test"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_the_compose_topology_survives_a_killed_worker_with_the_store_on_s3(
    machines: Machine, tiny_model_dir: Path, page: Any, page_errors: list[str]
) -> None:
    migrated = machines.run_once("migrate")
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    # compose's own command, bound to a port of the test's (argparse keeps the last --host and --port)
    web = machines.start("web", "web", "--port", str(port), "--host", "127.0.0.1")
    base_url = f"http://127.0.0.1:{port}"
    wait_healthy(base_url, web.alive, lambda: web.output()[-3000:])
    training = [machines.start("worker", f"machine-{n}", "--name", f"worker-{n}@%h") for n in (1, 2)]
    playground = machines.start("playground-worker", "machine-3")
    for process in (*training, playground):
        process.wait_for(" ready.", timeout=180)
    settings = Settings(database_url=machines.addresses["MEAL_DATABASE_URL"], data_dir=machines.directory / "test")
    p = Panel(base_url, settings, {"Authorization": f"Bearer {admin_token(machines)}"}, list(training))

    config = paced_config(tiny_model_dir, TOTAL, eval__every=3)
    first = p.launch(config, "killed-on-a-machine")["id"]
    second = p.launch(config, "trained-beside-it")["id"]
    # The run whose worker is killed: past its second checkpoint (published to the store when progress shows).
    running = p.wait_run(first, lambda r: r["status"] == "running" and r["iteration"] >= 2, "past iteration 2")
    holder = next(w for w in training if w.process is not None and running["worker"].endswith(f":{w.process.pid}"))
    assert holder.process is not None
    with_signal(holder.process.pid, signal.SIGKILL)
    holder.process.wait(timeout=30)
    killed_at = time.monotonic()
    p.watched.remove(holder)
    recorded = max(stored(settings.database_url, first).steps())
    assert recorded < TOTAL

    failed = p.wait_run(first, lambda r: r["status"] != "running", "failed", timeout=HEARTBEAT_TIMEOUT_S * 4 + 60)
    assert failed["status"] == "failed" and failed["error"].startswith("worker vanished"), failed
    # A new machine with an empty cache replaces the dead one; whichever worker is free first resumes the run.
    replacement = machines.start("worker", "machine-4", "--name", "worker-4@%h")
    replacement.wait_for(" ready.", timeout=180)
    p.watched.append(replacement)
    assert p.post(f"/api/runs/{first}/resume").status_code == 200
    resumed = p.wait_run(first, lambda r: r["status"] == "running" and r["attempts"] == 2, "resumed", timeout=300)
    resumer = next(w for w in p.watched if w.process is not None and resumed["worker"].endswith(f":{w.process.pid}"))
    p.wait_run(first, lambda r: r["iteration"] > recorded or r["status"] != "running", "training again")
    resumed_after = time.monotonic() - killed_at
    done = [p.wait_finished(run_id, timeout=600) for run_id in (first, second)]

    outcome = [(d["status"], d["iteration"], d["attempts"]) for d in done]
    assert outcome == [("succeeded", TOTAL, 2), ("succeeded", TOTAL, 1)]
    fetched = re.findall(rf"run {first}: fetched checkpoint (iter-\d+)", resumer.output())
    assert fetched, "the resuming worker did not fetch the checkpoint from the store"
    resume_from = int(fetched[0].removeprefix("iter-"))
    assert f"run {first}: resuming from iteration {resume_from}" in resumer.output()
    assert 2 <= resume_from <= recorded
    points = 0
    for run_id in (first, second):
        records = stored(settings.database_url, run_id)
        points += records.check_complete(TOTAL, evaluated=[3, 6], objectives=PACED)
    # The web server, on a machine of its own (nothing on its disk), lists what the workers published.
    listed = p.get(f"/api/runs/{first}/checkpoints")
    assert listed[0] == f"iter-{TOTAL:06d}" and listed[-1] == "base"

    # The playground worker, on a third machine, samples the first run's final policy from the store.
    asked = p.post(
        "/api/playground",
        {"run_id": first, "prompt": "Hello there", "weights": [[1, 0], [0, 1]], "seed": 1, "max_new_tokens": 6},
    )
    assert asked.status_code in (200, 201, 202), asked.text
    generation_id = asked.json()["id"]
    deadline = time.monotonic() + 300
    while (generation := p.get(f"/api/playground/{generation_id}"))["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, generation
        time.sleep(0.5)
    assert generation["status"] == "succeeded", generation
    assert [len(output["samples"]) for output in generation["outputs"]] == [1, 1]
    assert generation["checkpoint"] == f"iter-{TOTAL:06d}"

    # The browser, against this topology: the admin of .env logs in and watches the resumed run's page.
    page.goto(f"{base_url}/runs/{first}")
    page.wait_for_url(re.compile(r".*/login\?next=.*"))
    page.fill("#login-name", ADMIN)
    page.fill("#login-password", machines.compose.dotenv["MEAL_ADMIN_PASSWORD"])
    page.click("#login-button")
    page.wait_for_url(f"{base_url}/runs/{first}")
    page.wait_for_selector("#run-status", timeout=BROWSER_WAIT_MS)
    page.wait_for_function("document.querySelector('#run-status').textContent === 'succeeded'", timeout=BROWSER_WAIT_MS)
    page.wait_for_selector(".uplot canvas", timeout=BROWSER_WAIT_MS)
    assert page.text_content("#run-name") == "killed-on-a-machine"
    assert page_errors == []

    figures(
        "compose topology",
        runs=2,
        trained_exactly_once=True,
        killed_after_iteration=recorded,
        resumed_from_checkpoint=resume_from,
        points_stored=points,
        points_lost=0,
        points_duplicated=0,
        death_to_resumed_training_s=round(resumed_after, 1),
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
    )
