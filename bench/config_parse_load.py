"""Hostile YAML under load: clients post the worst config texts the size limit lets through to
`POST /api/config/parse`, back to back, while a prober calls `/healthz` every 20 ms (issue 18: four concurrent
240 kB sexagesimal parses took 22.6 s and raised `/healthz` p50 from 5 ms to 385 ms).

Texts (each just under MAX_CONFIG_TEXT): one sexagesimal scalar of 49,000 parts, and a flow list of 49,000 items
(refused at MAX_CONFIG_NODES). One web process (uvicorn, as `meal web` runs it), SQLite.

    .venv/bin/python bench/config_parse_load.py                  # 4 clients, 20 s a text
    .venv/bin/python bench/config_parse_load.py --clients 8 --seconds 30

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from panel import ROOT, bench_database, log, our_server, percentile  # noqa: E402

from app.store.settings import Settings  # noqa: E402

TEXTS = {
    "sexagesimal": "seed: " + ":".join(["1"] * 49_000),
    "flow_list": "a: [" + ",".join(["1"] * 49_000) + "]",
}


def healthz(base: str, seconds: float) -> list[float]:
    """Latencies (ms) of /healthz, one call every 20 ms."""
    found = []
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=30) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get(f"{base}/healthz")
            found.append((time.perf_counter() - started) * 1000)
            time.sleep(0.02)
    return found


def flood(
    base: str, headers: dict[str, str], text: str, clients: int, seconds: float
) -> tuple[list[float], list[float]]:
    """(parse latencies in s, /healthz latencies in ms) while `clients` post `text` back to back."""
    stop, parses = threading.Event(), []

    def client() -> None:
        with httpx.Client(headers=headers, timeout=120) as http:
            while not stop.is_set():
                started = time.perf_counter()
                response = http.post(f"{base}/api/config/parse", json={"text": text})
                parses.append(time.perf_counter() - started)
                assert response.status_code == 422, response.text[:300]

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    probed = healthz(base, seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return parses, probed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    os.environ["PYTHONPATH"] = str(ROOT)
    results: dict[str, object] = {"clients": args.clients, "seconds": args.seconds, "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        with bench_database("sqlite", tmp, "") as url, our_server(url, tmp, Settings(data_dir=tmp)) as (base, headers):
            quiet = healthz(base, 5)
            results["healthz_quiet_ms"] = {"p50": statistics.median(quiet), "p95": percentile(quiet, 95)}
            log(f"quiet: /healthz p50 {statistics.median(quiet):.1f} ms")
            for name, text in TEXTS.items():
                parses, probed = flood(base, headers, text, args.clients, args.seconds)
                results[name] = {
                    "chars": len(text),
                    "requests": len(parses),
                    "parse_p50_s": statistics.median(parses),
                    "parse_max_s": max(parses),
                    "healthz_p50_ms": statistics.median(probed),
                    "healthz_p95_ms": percentile(probed, 95),
                }
                log(
                    f"{name}: {len(parses)} parses, p50 {statistics.median(parses):.3f} s; "
                    f"/healthz p50 {statistics.median(probed):.1f} ms, p95 {percentile(probed, 95):.1f} ms"
                )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
