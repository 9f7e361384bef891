"""`meal up` as a supervisor: a worker killed as the OOM killer kills (SIGKILL) takes nothing else down, its run is
failed at once (not after the heartbeat timeout) and stays resumable, and the worker comes back."""

from __future__ import annotations

import os
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
from helpers import bearer, tiny_run_config, wait_healthy

from app.store.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def up(tmp_path: Path) -> Iterator[tuple[str, Settings, Path]]:
    port, data = free_port(), tmp_path / "data"
    log = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEAL_")}
    env.update(MEAL_ALLOWED_ROOTS=os.environ["MEAL_ALLOWED_ROOTS"], HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [str(Path(sys.executable).with_name("meal")), "up", "--port", str(port), "--data-dir", str(data)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, lambda: process.poll() is None, lambda: log.read_text()[-3000:])
        yield base, Settings(data_dir=data), log
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        print(log.read_text()[-6000:])


def wait_for(what: str, check: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    pytest.fail(f"not {what} within {timeout} s")


def test_the_address_and_login_link_come_last_once_everything_is_up(up: tuple[str, Settings, Path]) -> None:
    """Printed at once, the first start's login link scrolled away under the workers' start-up messages."""
    _base, _settings, log = up
    text = wait_for("the banner", lambda: "is up on" in (t := log.read_text()) and "/login/once/" in t and t)
    assert text.count(" ready.") >= 2  # both workers took tasks before it
    assert text.rfind(" ready.") < text.rfind("is up on") < text.rfind("/login/once/")
    assert "not everything answered" not in text


def test_a_killed_worker_fails_its_run_at_once_and_comes_back(
    up: tuple[str, Settings, Path], tiny_model_dir: Path
) -> None:
    base, settings, log = up
    headers = bearer(settings)
    config = tiny_run_config(tiny_model_dir, iterations=400, checkpoint__every=1, eval__every=0).model_dump(mode="json")
    run_id = httpx.post(f"{base}/api/runs", json={"name": "doomed", "config": config}, headers=headers).json()["id"]

    def run() -> dict[str, Any]:
        return dict(httpx.get(f"{base}/api/runs/{run_id}", headers=headers, timeout=10).json())

    training = wait_for("training", lambda: (r := run())["status"] == "running" and r["iteration"] >= 2 and r)
    host, _, pid = training["worker"].rpartition(":")
    assert host == socket.gethostname()
    killed_at = time.monotonic()
    os.kill(int(pid), signal.SIGKILL)

    failed = wait_for("failed", lambda: (r := run())["status"] == "failed" and r, timeout=30)
    assert "worker died (signal 9)" in failed["error"] and "resume" in failed["error"]
    assert time.monotonic() - killed_at < 30  # not the 120 s heartbeat timeout
    assert httpx.get(f"{base}/healthz").status_code == 200  # the web server kept serving
    wait_for("the worker back", lambda: "restarting in" in log.read_text() and log.read_text().count(" ready.") >= 3)

    resumed = httpx.post(f"{base}/api/runs/{run_id}/resume", headers=headers)
    assert resumed.status_code == 200, resumed.text
    again = wait_for(
        "training again", lambda: (r := run())["status"] == "running" and r["worker"] != training["worker"] and r
    )
    assert again["iteration"] >= training["iteration"] - 1  # from its last checkpoint, not from the start
    httpx.post(f"{base}/api/runs/{run_id}/stop", headers=headers)
    wait_for("stopped", lambda: run()["status"] == "stopped")
