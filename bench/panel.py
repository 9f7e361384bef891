"""Control-panel benchmark: metric ingest, chart queries and live-event delay, on SQLite and PostgreSQL, vs MLflow.

Measured in one run:

(1) ingest throughput (points/s)
    recorder:  `worker.recorder.DatabaseRecorder.metrics(step, {30 keys})` in a loop (values computed beforehand),
               then `close()`; timed from the first call until close() returns, i.e. until every point is committed
               (the background flush thread writes while the loop runs). Checked: the run holds every point.
    series:    one key, 1,000,000 points, through `app.store.metric_store.ingest` in batches of 5,000 (one transaction
               each): the series the chart query reads.
(2) chart query: GET /api/runs/{id}/metrics?keys=<the 1M key>&max_points=1000 through the real HTTP API (uvicorn in
    a subprocess, one httpx client and keep-alive connection), after 3 warm-up calls; median and p95 of ≥ 30 calls.
    Checked: ≤ 1000 buckets, each with last, min and max, the last bucket ending at the last step.
(3) MLflow: a tracking server (`mlflow server --backend-store-uri sqlite:///…`) run from its own venv outside the
    repo (created with `pip install mlflow` if missing); a client subprocess in that venv logs the same 30-key shape
    and the single-key series with `MlflowClient.log_batch` (1,000 metrics per call, the documented maximum), then
    fetches the series' full history with `MlflowClient.get_metric_history` (which pages through the REST API,
    25,000 points a page), up to 3 times, no new fetch once the fetches took 120 s in all; the median is reported.
    Ratios: our recorder ingest / MLflow ingest (target ≥ 10×); MLflow history fetch / our chart query median
    (target ≥ 20×). If MLflow's series has fewer points than ours, the N is printed; nothing is extrapolated.
(4) event delay: a client streams GET /api/runs/{id}/events (SSE) while a DatabaseRecorder (the worker's default
    flush interval) writes one point every 100 ms; delay = client receive time − `recorder.metrics()` call time,
    for 100 points; p50 / p95 / max (target p95 ≤ 2 s).

    .venv/bin/python bench/panel.py                 # full run (SQLite, PostgreSQL, MLflow)
    .venv/bin/python bench/panel.py --quick         # smoke run: small sizes, no MLflow unless --mlflow
    .venv/bin/python bench/panel.py --skip-mlflow --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test

--pg-url names a database to connect to for CREATE/DROP DATABASE; the benchmark creates its own database next to
it and drops it at the end. The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.auth import Keyring, create_token, create_user, find_user, load_secret  # noqa: E402
from app.store import run_state  # noqa: E402
from app.store.db import get_engine, session_scope  # noqa: E402
from app.store.metric_store import Point, ingest  # noqa: E402
from app.store.migrate import upgrade  # noqa: E402
from app.store.models import MetricPoint  # noqa: E402
from app.store.settings import Settings  # noqa: E402
from meal_core import metric_keys as keys  # noqa: E402
from meal_core.enums import Role  # noqa: E402
from worker.recorder import DatabaseRecorder  # noqa: E402

SERIES_KEY = keys.LOSS_POLICY
SSE_KEY = "bench/sse_probe"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TARGET_INGEST_RATIO = 10.0
TARGET_FETCH_RATIO = 20.0
TARGET_QUERY_MS = 100.0
TARGET_SSE_P95_S = 2.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def shape_keys(n_keys: int) -> list[str]:
    groups = ["reward", "pref_weight", "loss", "accept_rate", "grad_norm"]
    return [f"{groups[i % len(groups)]}/obj{i:02d}" for i in range(n_keys)]


def shape_value(step: int, i: int) -> float:
    """Deterministic, training-curve-like values (same formula on both sides of the MLflow comparison)."""
    return math.exp(-step / 5000.0) * (1 + i / 10) + 0.05 * math.sin(step * 0.37 + i)


def series_value(step: int) -> float:
    return 2.0 * math.exp(-step / 300000.0) + 0.1 * math.sin(step * 0.013)


# -- processes ---------------------------------------------------------------------------------------------------


class Server:
    """A child process (our uvicorn or the MLflow server), terminated with its process group at the end."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], health_url: str, log_path: Path) -> None:
        self.name, self.health_url, self.log_path = name, health_url, log_path
        self.log_file = open(log_path, "wb")  # noqa: SIM115 — closed in stop()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=ROOT, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log: {self.log_tail()}")
            with suppress(httpx.HTTPError):
                if httpx.get(self.health_url, timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} did not answer {self.health_url} within {timeout:.0f}s; {self.log_tail()}")

    def log_tail(self, chars: int = 2000) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log_file.close()


def admin_headers(database_url: str, data_dir: Path) -> dict[str, str]:
    """An admin's API token (every API call has a user); the server reads the same secret from `data_dir`."""
    keyring = Keyring(load_secret(Settings(database_url=database_url, data_dir=data_dir)))
    with session_scope(database_url) as session:
        user = find_user(session, "bench") or create_user(session, "bench", Role.ADMIN, None)
        token, _ = create_token(session, keyring, user, "bench")
    return {"Authorization": f"Bearer {token}"}


@contextmanager
def our_server(database_url: str, data_dir: Path, settings: Settings) -> Iterator[tuple[str, dict[str, str]]]:
    """Our web server in a subprocess: its base URL and an admin's Authorization header."""
    headers = admin_headers(database_url, data_dir)
    port = free_port()
    env = {
        **os.environ,
        "MEAL_DATABASE_URL": database_url,
        "MEAL_DATA_DIR": str(data_dir),
        "MEAL_EVENTS_POLL_S": str(settings.events_poll_s),
    }
    argv = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    base = f"http://127.0.0.1:{port}"
    server = Server("meal web", argv, env, f"{base}/healthz", data_dir / f"uvicorn-{port}.log")
    try:
        server.wait_ready(60)
        yield base, headers
    finally:
        server.stop()


# -- databases ---------------------------------------------------------------------------------------------------


@contextmanager
def bench_database(backend: str, tmp: Path, pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database; removed afterwards."""
    if backend == "sqlite":
        path = tmp / "sqlite" / "bench.sqlite"
        url = f"sqlite:///{path}"
        try:
            upgrade(url)
            yield url
        finally:
            get_engine(url).dispose()
            shutil.rmtree(path.parent, ignore_errors=True)
        return
    name = f"meal_bench_{os.getpid()}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(url)
        yield url
    finally:
        get_engine(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def new_run(url: str, name: str, total: int) -> int:
    with session_scope(url) as session:
        return run_state.create_run(session, name, {"bench": True}, total, "bench").id


def count_points(url: str, run_id: int) -> int:
    with session_scope(url) as session:
        return int(session.scalar(select(func.count()).where(MetricPoint.run_id == run_id)) or 0)


# -- measurements ------------------------------------------------------------------------------------------------


@dataclass
class BackendResult:
    backend: str
    recorder_points: int = 0
    recorder_s: float = 0.0
    series_points: int = 0
    series_s: float = 0.0
    query_ms: list[float] = field(default_factory=list)
    query_buckets: int = 0
    query_bytes: int = 0
    sse_delays_s: list[float] = field(default_factory=list)
    sse_sent: int = 0

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "recorder_points": self.recorder_points,
            "recorder_s": round(self.recorder_s, 3),
            "recorder_points_per_s": round(self.recorder_points / self.recorder_s) if self.recorder_s else None,
            "series_points": self.series_points,
            "series_s": round(self.series_s, 3),
            "series_points_per_s": round(self.series_points / self.series_s) if self.series_s else None,
        }
        if self.query_ms:
            out |= {
                "query_reps": len(self.query_ms),
                "query_median_ms": round(statistics.median(self.query_ms), 2),
                "query_p95_ms": round(percentile(self.query_ms, 95), 2),
                "query_buckets": self.query_buckets,
                "query_bytes": self.query_bytes,
            }
        if self.sse_sent:
            d = self.sse_delays_s
            out |= {
                "sse_sent": self.sse_sent,
                "sse_received": len(d),
                "sse_p50_s": round(statistics.median(d), 3) if d else None,
                "sse_p95_s": round(percentile(d, 95), 3) if d else None,
                "sse_max_s": round(max(d), 3) if d else None,
            }
        return out


def bench_recorder(url: str, settings: Settings, n_keys: int, n_points: int) -> tuple[int, float]:
    steps = max(1, n_points // n_keys)
    keys = shape_keys(n_keys)
    rows = [{key: shape_value(step, i) for i, key in enumerate(keys)} for step in range(steps)]
    run_id = new_run(url, "bench recorder", steps)
    recorder = DatabaseRecorder(url, run_id, "bench", settings.recorder_flush_s, settings.heartbeat_interval_s)
    start = time.perf_counter()
    for step, values in enumerate(rows):
        recorder.metrics(step, values)
    recorder.close()
    elapsed = time.perf_counter() - start
    stored = count_points(url, run_id)
    if stored != steps * n_keys:
        raise RuntimeError(f"recorder: {stored} points stored, {steps * n_keys} sent")
    return steps * n_keys, elapsed


def bench_series(url: str, n_points: int, batch: int) -> tuple[int, float, int]:
    run_id = new_run(url, "bench series", n_points)
    now = time.time()
    start = time.perf_counter()
    for first in range(0, n_points, batch):
        points = [Point(SERIES_KEY, s, series_value(s), now) for s in range(first, min(first + batch, n_points))]
        with session_scope(url) as session:
            ingest(session, run_id, points)
    elapsed = time.perf_counter() - start
    stored = count_points(url, run_id)
    if stored != n_points:
        raise RuntimeError(f"series: {stored} points stored, {n_points} sent")
    return n_points, elapsed, run_id


def bench_query(
    base: str, headers: dict[str, str], run_id: int, n_points: int, reps: int, max_points: int = 1000
) -> tuple[list[float], int, int]:
    url = f"{base}/api/runs/{run_id}/metrics"
    params = {"keys": SERIES_KEY, "max_points": str(max_points)}
    times: list[float] = []
    with httpx.Client(timeout=60, headers=headers) as client:
        for i in range(reps + 3):
            start = time.perf_counter()
            response = client.get(url, params=params)
            elapsed = (time.perf_counter() - start) * 1000
            response.raise_for_status()
            body = response.json()
            if i >= 3:
                times.append(elapsed)
    (series,) = body["series"]
    buckets = len(series["steps"])
    lengths = {len(series[k]) for k in ("steps", "values", "min", "max")}
    if lengths != {buckets} or not 0 < buckets <= max_points or series["steps"][-1] != n_points - 1:
        raise RuntimeError(f"chart query returned an unexpected shape: {buckets} buckets, lengths {lengths}")
    if not all(lo <= v <= hi for lo, v, hi in zip(series["min"], series["values"], series["max"], strict=True)):
        raise RuntimeError("chart query: a bucket's last value lies outside its min/max")
    return times, buckets, len(response.content)


def bench_sse(
    base: str, headers: dict[str, str], url: str, settings: Settings, n: int, interval: float
) -> tuple[list[float], int]:
    """Delay from `recorder.metrics()` to the SSE client parsing the point."""
    run_id = new_run(url, "bench sse", n)
    sent: dict[int, float] = {}
    received: dict[int, float] = {}
    connected, done, failure = threading.Event(), threading.Event(), []

    def client() -> None:
        try:
            timeout = httpx.Timeout(10, read=60)
            with (
                httpx.Client(timeout=timeout, headers=headers) as http,
                http.stream("GET", f"{base}/api/runs/{run_id}/events") as r,
            ):
                r.raise_for_status()
                event, data = "", []
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
                    elif line == "":
                        if event:
                            now = time.time()
                            connected.set()
                            if event == "metrics":
                                for step, _value in json.loads("\n".join(data)).get(SSE_KEY, []):
                                    received.setdefault(int(step), now)
                        event, data = "", []
                    if done.is_set() or len(received) >= n:
                        return
        except Exception as exc:  # reported by the main thread
            failure.append(exc)
            connected.set()

    thread = threading.Thread(target=client, name="sse-client", daemon=True)
    thread.start()
    if not connected.wait(30) or failure:
        raise RuntimeError(f"SSE client did not connect: {failure}")
    recorder = DatabaseRecorder(url, run_id, "bench-sse", settings.recorder_flush_s, settings.heartbeat_interval_s)
    start = time.monotonic()
    try:
        for step in range(n):
            sent[step] = time.time()
            recorder.metrics(step, {SSE_KEY: float(step)})
            time.sleep(max(0.0, start + (step + 1) * interval - time.monotonic()))
    finally:
        recorder.close()
    deadline = time.monotonic() + 15
    while len(received) < n and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)
    done.set()
    thread.join(timeout=30)  # the server sends a keep-alive at least every 15 s, which wakes the client
    if failure:
        raise RuntimeError(f"SSE client failed: {failure[0]!r}")
    return [received[s] - sent[s] for s in sorted(received) if s in sent], n


def bench_backend(backend: str, args: argparse.Namespace, tmp: Path, settings: Settings) -> BackendResult:
    result = BackendResult(backend)
    with bench_database(backend, tmp, args.pg_url) as url:
        log(f"{backend}: recorder ingest, {args.keys} keys, {args.points:,} points")
        result.recorder_points, result.recorder_s = bench_recorder(url, settings, args.keys, args.points)
        log(f"{backend}: {result.recorder_points / result.recorder_s:,.0f} points/s")
        log(f"{backend}: series ingest, {args.series_points:,} points in batches of {args.series_batch:,}")
        result.series_points, result.series_s, series_run = bench_series(url, args.series_points, args.series_batch)
        log(f"{backend}: {result.series_points / result.series_s:,.0f} points/s")
        with our_server(url, tmp, settings) as (base, headers):
            log(f"{backend}: chart query × {args.query_reps}")
            result.query_ms, result.query_buckets, result.query_bytes = bench_query(
                base, headers, series_run, args.series_points, args.query_reps
            )
            log(f"{backend}: median {statistics.median(result.query_ms):.1f} ms")
            if not args.skip_sse:
                log(f"{backend}: event delay, {args.sse_points} points every {args.sse_interval * 1000:.0f} ms")
                result.sse_delays_s, result.sse_sent = bench_sse(
                    base, headers, url, settings, args.sse_points, args.sse_interval
                )
    return result


# -- MLflow ------------------------------------------------------------------------------------------------------

MLFLOW_CLIENT = textwrap.dedent(
    '''
    """Runs inside the MLflow venv: log the benchmark's metrics through MlflowClient, fetch the series' history."""
    import json, math, statistics, sys, time

    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    cfg = json.loads(sys.argv[1])
    exec(cfg["value_functions"])  # shape_keys, shape_value, series_value: the same code as the panel benchmark
    client = MlflowClient(tracking_uri=cfg["uri"])
    experiment = client.create_experiment(f"meal-bench-{time.time_ns()}")
    ts = int(time.time() * 1000)
    out = {"mlflow_version": mlflow.__version__, "batch": cfg["batch"]}

    def log_all(run_id, metrics_iter, total):
        start = time.perf_counter()
        chunk = []
        for m in metrics_iter:
            chunk.append(m)
            if len(chunk) == cfg["batch"]:
                client.log_batch(run_id, metrics=chunk)
                chunk = []
        if chunk:
            client.log_batch(run_id, metrics=chunk)
        return time.perf_counter() - start

    keys = shape_keys(cfg["keys"])
    steps = max(1, cfg["points"] // cfg["keys"])
    rows = [{k: shape_value(step, i) for i, k in enumerate(keys)} for step in range(steps)]
    run = client.create_run(experiment).info.run_id
    metrics = (Metric(k, v, ts, step) for step, values in enumerate(rows) for k, v in values.items())
    out["shape_points"] = steps * cfg["keys"]
    out["shape_s"] = log_all(run, metrics, out["shape_points"])
    print(json.dumps({"progress": "shape", **out}), file=sys.stderr, flush=True)

    n = cfg["series_points"]
    run = client.create_run(experiment).info.run_id
    metrics = (Metric(cfg["series_key"], series_value(s), ts, s) for s in range(n))
    out["series_points"] = n
    out["series_s"] = log_all(run, metrics, n)
    print(json.dumps({"progress": "series", **out}), file=sys.stderr, flush=True)

    fetches = []
    while len(fetches) < cfg["history_reps"] and (not fetches or sum(fetches) < cfg["history_budget_s"]):
        start = time.perf_counter()
        history = client.get_metric_history(run, cfg["series_key"])
        fetches.append(time.perf_counter() - start)
        if len(history) != n:
            raise SystemExit(f"get_metric_history returned {len(history)} points, {n} were logged")
    out["history_points"] = len(history)
    out["history_s"] = fetches
    print(json.dumps(out))
    '''
)


def value_functions_source() -> str:
    import inspect

    return "import math\n" + "\n".join(inspect.getsource(f) for f in (shape_keys, shape_value, series_value))


def ensure_mlflow_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    if (venv / "bin" / "mlflow").exists():
        return python
    log(f"creating {venv} and installing mlflow from PyPI (once)")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "mlflow"], check=True)
    return python


def bench_mlflow(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    venv = Path(args.mlflow_venv).resolve()
    if venv.is_relative_to(ROOT):
        raise SystemExit(f"--mlflow-venv must lie outside the repository ({ROOT})")
    python = ensure_mlflow_venv(venv)
    folder = tmp / "mlflow"
    folder.mkdir()
    port = free_port()
    argv = [str(venv / "bin" / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    argv += ["--default-artifact-root", (folder / "artifacts").as_uri(), "--host", "127.0.0.1", "--port", str(port)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    base = f"http://127.0.0.1:{port}"
    server = Server("mlflow server", argv, env, f"{base}/health", folder / "server.log")
    try:
        server.wait_ready(180)
        log(f"mlflow server up at {base}; logging {args.points:,} + {args.mlflow_series_points:,} points")
        script = folder / "client.py"
        script.write_text(MLFLOW_CLIENT)
        cfg = {
            "uri": base,
            "batch": 1000,
            "keys": args.keys,
            "points": args.points,
            "series_points": args.mlflow_series_points,
            "series_key": SERIES_KEY,
            "history_reps": args.mlflow_history_reps,
            "history_budget_s": args.mlflow_history_budget,
            "value_functions": value_functions_source(),
        }
        proc = subprocess.run(
            [str(python), str(script), json.dumps(cfg)], env=env, cwd=folder, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"MLflow client failed ({proc.returncode}): {proc.stderr[-3000:]}")
        out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        out["server_cmd"] = " ".join(argv[1:])
        return out
    finally:
        server.stop()


# -- report ------------------------------------------------------------------------------------------------------


def fmt_rate(points: int, seconds: float) -> str:
    return f"{points / seconds:,.0f}/s ({points:,} in {seconds:.1f} s)" if seconds else "-"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("target met" if ok else "target NOT met")


def report(results: list[BackendResult], mlflow: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    rows: list[tuple[str, ...]] = []
    targets: dict[str, dict[str, Any]] = {}

    def target(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        targets[name] = {"value": value, "target": goal, "met": ok}

    for r in results:
        s = r.summary()
        b = r.backend
        rows.append((f"{b}: recorder ingest ({args.keys} keys/step)", fmt_rate(r.recorder_points, r.recorder_s), ""))
        rows.append(
            (
                f"{b}: series ingest (metric_store.ingest ×{args.series_batch})",
                fmt_rate(r.series_points, r.series_s),
                "",
            )
        )
        if r.query_ms:
            ok = s["query_median_ms"] <= TARGET_QUERY_MS
            rows.append(
                (
                    f"{b}: chart query, {r.series_points:,} pts → {r.query_buckets} buckets",
                    f"median {s['query_median_ms']:.1f} ms, p95 {s['query_p95_ms']:.1f} ms (n={s['query_reps']})",
                    f"≤ {TARGET_QUERY_MS:.0f} ms: {verdict(ok)}",
                )
            )
            target(f"{b}_query_median_ms", s["query_median_ms"], f"<= {TARGET_QUERY_MS}", ok)
        if r.sse_sent:
            ok = s["sse_p95_s"] is not None and s["sse_p95_s"] <= TARGET_SSE_P95_S and s["sse_received"] == r.sse_sent
            rows.append(
                (
                    f"{b}: event delay ({s['sse_received']}/{r.sse_sent} points)",
                    f"p50 {s['sse_p50_s']:.2f} s, p95 {s['sse_p95_s']:.2f} s, max {s['sse_max_s']:.2f} s",
                    f"p95 ≤ {TARGET_SSE_P95_S:.0f} s: {verdict(ok)}",
                )
            )
            target(f"{b}_sse_p95_s", s["sse_p95_s"], f"<= {TARGET_SSE_P95_S}", ok)

    ratios: dict[str, Any] = {}
    if mlflow:
        shape_rate = mlflow["shape_points"] / mlflow["shape_s"]
        fetch_s = statistics.median(mlflow["history_s"])
        rows.append(("mlflow: log_batch ingest, 30-key shape", fmt_rate(mlflow["shape_points"], mlflow["shape_s"]), ""))
        rows.append(
            ("mlflow: log_batch ingest, single-key series", fmt_rate(mlflow["series_points"], mlflow["series_s"]), "")
        )
        rows.append(
            (
                f"mlflow: get_metric_history, N = {mlflow['history_points']:,} points",
                f"median {fetch_s * 1000:,.0f} ms over {len(mlflow['history_s'])} fetches",
                "",
            )
        )
        for r in results:
            b = r.backend
            ratio = (r.recorder_points / r.recorder_s) / shape_rate
            ok = ratio >= TARGET_INGEST_RATIO
            rows.append(
                (f"ratio ingest {b} recorder / mlflow", f"{ratio:.1f}×", f"≥ {TARGET_INGEST_RATIO:.0f}×: {verdict(ok)}")
            )
            target(f"{b}_ingest_ratio", round(ratio, 2), f">= {TARGET_INGEST_RATIO}", ok)
            ratios[f"ingest_{b}_over_mlflow"] = round(ratio, 2)
            if r.query_ms:
                ratio = fetch_s * 1000 / statistics.median(r.query_ms)
                ok = ratio >= TARGET_FETCH_RATIO
                note = (
                    ""
                    if mlflow["history_points"] == r.series_points
                    else f" (MLflow N={mlflow['history_points']:,} vs ours {r.series_points:,})"
                )
                rows.append(
                    (
                        f"ratio mlflow history / {b} chart query{note}",
                        f"{ratio:.1f}×",
                        f"≥ {TARGET_FETCH_RATIO:.0f}×: {verdict(ok)}",
                    )
                )
                target(f"{b}_fetch_ratio", round(ratio, 2), f">= {TARGET_FETCH_RATIO}", ok)
                ratios[f"mlflow_history_over_{b}_query"] = round(ratio, 2)
                ratios[f"mlflow_history_points_vs_{b}_query_points"] = [mlflow["history_points"], r.series_points]

    width = max(len(r[0]) for r in rows)
    width2 = max(len(r[1]) for r in rows)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print()
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}; load average at start {args.loadavg_start}, now {load}"
    )
    print(f"{'measure':<{width}}  {'result':<{width2}}  target")
    print("-" * (width + width2 + 30))
    for name, value, goal in rows:
        print(f"{name:<{width}}  {value:<{width2}}  {goal}")
    print()
    return {
        "bench": "panel",
        "quick": args.quick,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_start": args.loadavg_start,
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "config": {
            "keys": args.keys,
            "points": args.points,
            "series_points": args.series_points,
            "series_batch": args.series_batch,
            "query_reps": args.query_reps,
            "sse_points": args.sse_points,
            "sse_interval_s": args.sse_interval,
            "mlflow_series_points": args.mlflow_series_points if mlflow else None,
        },
        "results": {r.backend: r.summary() for r in results},
        "mlflow": mlflow,
        "ratios": ratios,
        "targets": targets,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes; skips MLflow unless --mlflow")
    parser.add_argument("--mlflow", action="store_true", help="run the MLflow comparison even with --quick")
    parser.add_argument("--skip-mlflow", action="store_true")
    parser.add_argument("--skip-pg", action="store_true", help="SQLite only")
    parser.add_argument("--skip-sse", action="store_true")
    parser.add_argument("--points", type=int, help="recorder ingest: total points (default 300,000; quick 30,000)")
    parser.add_argument("--keys", type=int, default=30, help="metric keys per step (default 30)")
    parser.add_argument("--series-points", type=int, help="chart series length (default 1,000,000; quick 100,000)")
    parser.add_argument("--series-batch", type=int, default=5000)
    parser.add_argument("--query-reps", type=int, default=30)
    parser.add_argument("--sse-points", type=int, help="event-delay points (default 100; quick 20)")
    parser.add_argument("--sse-interval", type=float, default=0.1, help="seconds between event-delay points")
    parser.add_argument("--pg-url", default=os.environ.get("MEAL_BENCH_PG_URL", DEFAULT_PG))
    parser.add_argument("--mlflow-venv", default="/tmp/meal-bench/mlflow-venv", help="outside the repository")
    parser.add_argument(
        "--mlflow-series-points",
        type=int,
        help="points of the MLflow series whose history is fetched (default: same as --series-points; quick 10,000)",
    )
    parser.add_argument("--mlflow-history-reps", type=int, default=3, help="history fetches (at most; default 3)")
    parser.add_argument(
        "--mlflow-history-budget",
        type=float,
        default=120.0,
        help="no further history fetch once the fetches so far took this many seconds (default 120)",
    )
    parser.add_argument("--workdir", default=None, help="temporary files go here (default: a new temp folder)")
    args = parser.parse_args(argv)
    args.points = args.points or (30_000 if args.quick else 300_000)
    args.series_points = args.series_points or (100_000 if args.quick else 1_000_000)
    args.sse_points = args.sse_points or (20 if args.quick else 100)
    args.mlflow_series_points = args.mlflow_series_points or (10_000 if args.quick else args.series_points)
    run_mlflow = not args.skip_mlflow and (args.mlflow or not args.quick)

    args.loadavg_start = [round(x, 2) for x in os.getloadavg()]
    settings = Settings()
    tmp = Path(tempfile.mkdtemp(prefix="meal-panel-bench-", dir=args.workdir))
    log(f"workdir {tmp}; recorder flush {settings.recorder_flush_s}s, events poll {settings.events_poll_s}s")
    results: list[BackendResult] = []
    mlflow: dict[str, Any] | None = None
    try:
        for backend in ("sqlite",) if args.skip_pg else ("sqlite", "postgresql"):
            results.append(bench_backend(backend, args, tmp, settings))
        if run_mlflow:
            mlflow = bench_mlflow(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = report(results, mlflow, args)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
