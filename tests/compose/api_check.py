"""The compose check's client (scripts/compose_check.sh): talks to the deployed stack from outside its containers,
through the published port only, as a user's script would. Standard library only (it runs with the host's python3).

Every command logs in as the .env admin (POST /api/auth/login: a session cookie and a CSRF token) and exits non-zero
with a one-line reason when what it checks is not so.

    api_check.py URL NAME PASSWORD launch RUN_NAME CONFIG.json [ITERATIONS]   prints the new run's id
    api_check.py URL NAME PASSWORD wait RUN_ID STATUS [TIMEOUT_S]             waits for a finished status
    api_check.py URL NAME PASSWORD wait-iteration RUN_ID N [TIMEOUT_S]        waits for running at iteration >= N
    api_check.py URL NAME PASSWORD record RUN_ID                              prints what is stored for a run (JSON)
    api_check.py URL NAME PASSWORD playground RUN_ID                          samples it through the playground worker
    api_check.py URL NAME PASSWORD overlap RUN_ID RUN_ID                      both trained at once, on two workers
    api_check.py URL NAME PASSWORD post PATH                                  e.g. /api/runs/3/resume
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import json
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

FINISHED = {"succeeded", "failed", "stopped"}


class Panel:
    def __init__(self, url: str, name: str, password: str) -> None:
        self.url = url.rstrip("/")
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.csrf = ""
        self.csrf = self.call("POST", "/api/auth/login", {"name": name, "password": password})["csrf_token"]

    def call(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200, 201, 202)) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.csrf:
            request.add_header("X-CSRF-Token", self.csrf)
        try:
            with self.opener.open(request, timeout=60) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read().decode()
        if status not in expect:
            fail(f"{method} {path}: HTTP {status}: {text[:500]}")
        return json.loads(text) if text else None

    def run(self, run_id: int) -> dict[str, Any]:
        return dict(self.call("GET", f"/api/runs/{run_id}"))


def fail(message: str) -> None:
    print(f"compose check: {message}", file=sys.stderr)
    raise SystemExit(1)


def say(message: str) -> None:
    print(f"compose check: {message}", file=sys.stderr, flush=True)


def launch(panel: Panel, name: str, config_path: str, iterations: str | None = None) -> None:
    with open(config_path) as handle:
        config = json.load(handle)
    if iterations is not None:
        config["iterations"] = int(iterations)
    created = panel.call("POST", "/api/runs", {"name": name, "config": config}, expect=(201,))
    print(created["id"])


def wait(panel: Panel, run_id: str, status: str, timeout_s: str = "900") -> None:
    deadline = time.monotonic() + float(timeout_s)
    last = None
    while True:
        run = panel.run(int(run_id))
        seen = (run["status"], run["iteration"])
        if seen != last:
            say(f"run {run_id}: {run['status']}, iteration {run['iteration']}/{run['total_iterations']}")
            last = seen
        if run["status"] in FINISHED:
            break
        if time.monotonic() > deadline:
            fail(f"run {run_id} still {run['status']} after {timeout_s} s")
        time.sleep(2)
    if run["status"] != status:
        fail(f"run {run_id} ended {run['status']}, not {status}: {run['error']}\n{run.get('traceback') or ''}")
    print(json.dumps({key: run[key] for key in ("status", "iteration", "worker", "error")}))


def wait_iteration(panel: Panel, run_id: str, iteration: str, timeout_s: str = "900") -> None:
    deadline = time.monotonic() + float(timeout_s)
    while True:
        run = panel.run(int(run_id))
        if run["status"] == "running" and run["iteration"] >= int(iteration):
            say(f"run {run_id}: running, iteration {run['iteration']}")
            return
        if run["status"] in FINISHED:
            fail(f"run {run_id} ended {run['status']} before iteration {iteration}: {run['error']}")
        if time.monotonic() > deadline:
            fail(f"run {run_id} not past iteration {iteration} after {timeout_s} s ({run['status']})")
        time.sleep(1)


def record(panel: Panel, run_id: str) -> None:
    """What a restart must keep: the run, every metric point, its samples, evaluations and checkpoints."""
    run = panel.run(int(run_id))
    series = panel.call("GET", f"/api/runs/{run_id}/metrics?max_points=100000")["series"]
    samples = panel.call("GET", f"/api/runs/{run_id}/samples")
    print(
        json.dumps(
            {
                "id": run["id"],
                "name": run["name"],
                "status": run["status"],
                "iteration": run["iteration"],
                "error": run["error"],
                "metric_keys": len(series),
                "metrics": panel.call("GET", f"/api/runs/{run_id}/metric-keys"),
                # every point of every series, and every sample: a digest, so that a restart must keep them all
                "series_digest": digest(series),
                "samples": len(samples),
                "samples_digest": digest(samples),
                "evaluations": [e["step"] for e in panel.call("GET", f"/api/runs/{run_id}/evaluations")],
                "checkpoints": panel.call("GET", f"/api/runs/{run_id}/checkpoints"),
            },
            sort_keys=True,
        )
    )


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def playground(panel: Panel, run_id: str, timeout_s: str = "600") -> None:
    asked = panel.call(
        "POST",
        "/api/playground",
        {"run_id": int(run_id), "prompt": "Say hello.", "weights": [[1, 0], [0, 1]], "seed": 1, "max_new_tokens": 8},
    )
    deadline = time.monotonic() + float(timeout_s)
    while (generation := panel.call("GET", f"/api/playground/{asked['id']}"))["status"] in ("queued", "running"):
        if time.monotonic() > deadline:
            fail(f"playground generation {asked['id']} still {generation['status']} after {timeout_s} s")
        time.sleep(1)
    if generation["status"] != "succeeded":
        fail(f"playground generation {asked['id']}: {generation}")
    counts = [len(output["samples"]) for output in generation["outputs"]]
    if counts != [1, 1] or not all(isinstance(s["text"], str) for o in generation["outputs"] for s in o["samples"]):
        fail(f"playground generation {asked['id']}: unexpected outputs {generation['outputs']}")
    texts = [output["samples"][0]["text"] for output in generation["outputs"]]
    say(f"playground {asked['id']} on {generation['checkpoint']}: {texts}")
    print(json.dumps({"id": asked["id"], "checkpoint": generation["checkpoint"]}))


def overlap(panel: Panel, first: str, second: str) -> None:
    """Both runs trained at the same time, on two worker containers (the second may still be training)."""
    runs = [panel.run(int(first)), panel.run(int(second))]
    for run in runs:
        if run["status"] not in ("succeeded", "running") or not run["started_at"]:
            fail(f"run {run['id']}: {run['status']}")
    now = datetime.now(UTC)
    started = [utc(run["started_at"]) for run in runs]
    finished = [utc(run["finished_at"]) if run["finished_at"] else now for run in runs]
    hosts = {run["worker"].rsplit(":", 1)[0] for run in runs}
    together = (min(finished) - max(started)).total_seconds()
    if together <= 0 or len(hosts) != 2:
        fail(f"runs {first} and {second} did not train at once on two workers: {runs}")
    say(f"runs {first} and {second} trained together for {together:.0f} s on {sorted(hosts)}")


def utc(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def post(panel: Panel, path: str) -> None:
    """POST with no body, e.g. /api/runs/3/resume or /api/runs/3/stop."""
    panel.call("POST", path)


COMMANDS = {
    "launch": launch,
    "wait": wait,
    "wait-iteration": wait_iteration,
    "record": record,
    "playground": playground,
    "overlap": overlap,
    "post": post,
}

if __name__ == "__main__":
    url, name, password, command, *rest = sys.argv[1:]
    COMMANDS[command](Panel(url, name, password), *rest)
