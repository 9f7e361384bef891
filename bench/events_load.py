"""Many viewers: event streams of one run on one web process, shared feed against per-client polling.

While a run records (a writer ingests one point every 250 ms whose value is the time it was written), N clients
stream `GET /api/runs/{id}/events` for a fixed time and a prober (a process of its own) calls `/healthz` every
200 ms. Measured per phase:

    event delay   client receive time − write time, every point at every client; p50 / p95 / max
    healthz       latency of each call; p50 / p95
    statements/s  SQL statements the web process sent (a SQLAlchemy counter inside it), minus none: the writer runs
                  in this process, not the server's

Phases, each on a fresh server process: the shared feed (`events_shared`, today's default) with 1 viewer and with
N viewers, then per-client polling (`MEAL_EVENTS_SHARED=false`, the way streams worked before) with N viewers. The
ratios printed are per-client ÷ shared at N viewers (statements/s, p95 delay, healthz p95) and shared N ÷ shared 1
(statements/s: 1.0 means the database does not see the viewers). Targets (issue 9): p95 delay ≤ 2 s and healthz
p95 ≤ 200 ms with the shared feed at N = 200.

    .venv/bin/python bench/events_load.py                   # 200 viewers, 60 s a phase, SQLite
    .venv/bin/python bench/events_load.py --viewers 50 --seconds 20 --pg-url postgresql+psycopg://postgres@127.0.0.1:5432/test

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from panel import ROOT, Server, admin_headers, bench_database, free_port, log, new_run, percentile  # noqa: E402

from app.store.db import session_scope  # noqa: E402
from app.store.metric_store import Point, ingest  # noqa: E402

PROBE_KEY = "bench/written_at"
WRITE_INTERVAL_S = 0.25
HEALTH_INTERVAL_S = 0.2
DRAIN_S = 5.0
TARGET_DELAY_P95_S = 2.0
TARGET_HEALTH_P95_MS = 200.0


@dataclass
class Phase:
    name: str
    viewers: int
    seconds: float
    delays_s: list[float] = field(default_factory=list)
    health_ms: list[float] = field(default_factory=list)
    statements: int = 0
    connected: int = 0
    written: int = 0

    def summary(self) -> dict[str, Any]:
        d, h = self.delays_s, self.health_ms
        return {
            "viewers": self.viewers,
            "connected": self.connected,
            "seconds": self.seconds,
            "points_written": self.written,
            "points_received": len(d),
            "points_lost": self.written * self.connected - len(d),
            "delay_p50_s": round(statistics.median(d), 3) if d else None,
            "delay_p95_s": round(percentile(d, 95), 3) if d else None,
            "delay_max_s": round(max(d), 3) if d else None,
            "healthz_p50_ms": round(statistics.median(h), 1) if h else None,
            "healthz_p95_ms": round(percentile(h, 95), 1) if h else None,
            "statements_per_s": round(self.statements / self.seconds, 1),
        }


@contextmanager
def web_process(database_url: str, data_dir: Path, shared: bool, count_file: Path) -> Any:
    port = free_port()
    env = {
        **os.environ,
        "MEAL_DATABASE_URL": database_url,
        "MEAL_DATA_DIR": str(data_dir),
        "MEAL_EVENTS_SHARED": "true" if shared else "false",
        "PYTHONPATH": str(ROOT),
    }
    argv = [sys.executable, __file__, "--serve", str(port), str(count_file)]
    base = f"http://127.0.0.1:{port}"
    server = Server("meal web", argv, env, f"{base}/healthz", data_dir / f"web-{port}.log")
    try:
        server.wait_ready(60)
        yield base
    finally:
        server.stop()


def serve(port: int, count_file: Path) -> None:
    """The web process of a phase: the app under uvicorn, counting the SQL statements it sends into `count_file`."""
    import uvicorn
    from sqlalchemy import event

    from app.main import create_app
    from app.store.db import get_engine
    from app.store.settings import get_settings

    app = create_app()
    statements = 0

    def count(*_: object) -> None:
        nonlocal statements
        statements += 1

    def report() -> None:
        while True:
            count_file.with_suffix(".tmp").write_text(str(statements))
            count_file.with_suffix(".tmp").replace(count_file)
            time.sleep(0.5)

    event.listen(get_engine(get_settings().database_url), "before_cursor_execute", count)
    threading.Thread(target=report, daemon=True).start()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def statements_so_far(count_file: Path) -> int:
    time.sleep(0.6)  # the server rewrites the file every 0.5 s
    return int(count_file.read_text())


class Writer(threading.Thread):
    """A run recording: one point every WRITE_INTERVAL_S, its value the wall-clock time of the write."""

    def __init__(self, database_url: str, run_id: int) -> None:
        super().__init__(name="writer", daemon=True)
        self.database_url, self.run_id = database_url, run_id
        self.written_at: list[float] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(WRITE_INTERVAL_S):
            now = time.time()
            with session_scope(self.database_url) as session:
                ingest(session, self.run_id, [Point(PROBE_KEY, len(self.written_at), now, now)])
            self.written_at.append(now)

    def written_between(self, start: float, end: float) -> int:
        return sum(start <= t < end for t in self.written_at)


async def viewer(client: httpx.AsyncClient, url: str, phase: Phase, ready: asyncio.Event, window: list[float]) -> None:
    """One client: the delay of every probe point written inside the measurement window [window[0], window[1])."""
    async with client.stream("GET", url) as response:
        response.raise_for_status()
        phase.connected += 1
        if phase.connected == phase.viewers:
            ready.set()
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "metrics":
                now = time.time()
                for _step, written_at in json.loads(line[5:]).get(PROBE_KEY, []):
                    if window[0] <= written_at < window[1]:
                        phase.delays_s.append(now - written_at)
            elif not line:
                event = ""


def probe(base: str, seconds: float) -> None:
    """`/healthz` every HEALTH_INTERVAL_S for `seconds`, in a process of its own (so that the 200 clients' event
    loop does not delay the answers it times); prints the latencies in ms as one JSON list."""
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            client.get(f"{base}/healthz").raise_for_status()
            latencies.append((time.perf_counter() - start) * 1000)
            time.sleep(HEALTH_INTERVAL_S)
    print(json.dumps(latencies))


async def watch(
    base: str, headers: dict[str, str], run_id: int, phase: Phase, count_file: Path, writer: Writer
) -> None:
    """Connect every viewer (each from the run's current cursor), then measure for phase.seconds."""
    cursor = httpx.get(f"{base}/api/runs/{run_id}", headers=headers).json()["event_cursor"]
    url = f"{base}/api/runs/{run_id}/events?cursor={cursor}"
    limits = httpx.Limits(max_connections=phase.viewers + 10, max_keepalive_connections=phase.viewers + 10)
    timeout = httpx.Timeout(30, read=None)
    ready, window = asyncio.Event(), [math.inf, math.inf]
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as streams:
        tasks = [asyncio.create_task(viewer(streams, url, phase, ready, window)) for _ in range(phase.viewers)]
        await asyncio.wait_for(ready.wait(), 120)
        before = await asyncio.to_thread(statements_so_far, count_file)
        window[0] = time.time()
        prober = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--probe", base, str(phase.seconds), stdout=asyncio.subprocess.PIPE
        )
        await asyncio.sleep(phase.seconds)
        window[1] = time.time()
        phase.statements = await asyncio.to_thread(statements_so_far, count_file) - before
        await asyncio.sleep(DRAIN_S)  # points written just before the end are still on their way
        phase.written = writer.written_between(window[0], window[1])
        phase.health_ms = json.loads((await prober.communicate())[0])
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def run_phase(database_url: str, tmp: Path, name: str, shared: bool, viewers: int, seconds: float) -> Phase:
    phase = Phase(name, viewers, seconds)
    count_file = tmp / f"statements-{name}"
    with web_process(database_url, tmp, shared, count_file) as base:
        headers = admin_headers(database_url, tmp)
        run_id = new_run(database_url, f"bench {name}", 1000)
        writer = Writer(database_url, run_id)
        writer.start()
        try:
            asyncio.run(watch(base, headers, run_id, phase, count_file, writer))
        finally:
            writer.stop_event.set()
            writer.join()
    log(f"{name}: {json.dumps(phase.summary())}")
    return phase


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--viewers", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--pg-url", help="run on a PostgreSQL database created next to this one (default SQLite)")
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "COUNT_FILE"), help=argparse.SUPPRESS)
    parser.add_argument("--probe", nargs=2, metavar=("BASE_URL", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), Path(args.serve[1]))
        return
    if args.probe:
        probe(args.probe[0], float(args.probe[1]))
        return
    backend = "postgresql" if args.pg_url else "sqlite"
    with tempfile.TemporaryDirectory(prefix="meal-events-load-") as tmp_name:
        tmp = Path(tmp_name)
        with bench_database(backend, tmp, args.pg_url or "") as url:
            phases = [
                run_phase(url, tmp, "shared-1", True, 1, min(args.seconds, 20.0)),
                run_phase(url, tmp, f"shared-{args.viewers}", True, args.viewers, args.seconds),
                run_phase(url, tmp, f"per-client-{args.viewers}", False, args.viewers, args.seconds),
            ]
    one, shared, per_client = (p.summary() for p in phases)
    result = {
        "backend": backend,
        "cpus": os.cpu_count(),
        "phases": {p.name: p.summary() for p in phases},
        "statements_ratio_per_client_over_shared": ratio(per_client["statements_per_s"], shared["statements_per_s"]),
        "statements_ratio_shared_n_over_shared_1": ratio(shared["statements_per_s"], one["statements_per_s"]),
        "delay_p95_ratio_per_client_over_shared": ratio(per_client["delay_p95_s"], shared["delay_p95_s"]),
        "healthz_p95_ratio_per_client_over_shared": ratio(per_client["healthz_p95_ms"], shared["healthz_p95_ms"]),
        "targets_met": bool(
            shared["delay_p95_s"] is not None
            and shared["delay_p95_s"] <= TARGET_DELAY_P95_S
            and shared["healthz_p95_ms"] is not None
            and shared["healthz_p95_ms"] <= TARGET_HEALTH_P95_MS
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
