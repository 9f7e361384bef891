"""What unfinished request headers cost the web process: N connections each sending M MB of one header that never
ends, the web process's resident memory before, while they are open, and after (docs/reliability.md).

    .venv/bin/python bench/header_flood.py                 # `meal web` as it runs now (app/server.py's limits)
    .venv/bin/python bench/header_flood.py --unguarded     # uvicorn.run() with its defaults, as `meal web` was

Flags: --connections N (10), --megabytes M (20). The server is a process of its own on a free port with a fresh
data folder; memory is its RSS (psutil), the peak of samples taken every 0.2 s while the connections send.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
UNGUARDED = (
    "import uvicorn; from app.main import create_app; from app.store.migrate import upgrade; "
    "from app.store.settings import Settings; s = Settings(); upgrade(s.database_url); "
    "uvicorn.run(create_app(s), host='127.0.0.1', port={port}, log_level='warning')"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def flood(port: int, megabytes: int, results: list[str]) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
            for _ in range(megabytes * 16):
                sock.sendall(b"x" * 65536)
            results.append("sent all, still open")
            time.sleep(3)  # hold the connection while memory is sampled
        except OSError as error:
            results.append(f"closed by the server ({type(error).__name__})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unguarded", action="store_true")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--megabytes", type=int, default=20)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEAL_")}
        env.update(MEAL_DATA_DIR=data, PYTHONPATH=str(ROOT))
        if args.unguarded:
            command = [sys.executable, "-c", UNGUARDED.format(port=port)]
        else:
            command = [sys.executable, "-m", "meal_core.cli", "web", "--port", str(port)]
        server = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.3)
            process = psutil.Process(server.pid)
            before = process.memory_info().rss
            results: list[str] = []
            threads = [
                threading.Thread(target=flood, args=(port, args.megabytes, results)) for _ in range(args.connections)
            ]
            for thread in threads:
                thread.start()
            peak = before
            while any(thread.is_alive() for thread in threads):
                peak = max(peak, process.memory_info().rss)
                time.sleep(0.2)
            after = process.memory_info().rss
            healthy = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code
        finally:
            server.terminate()
            server.wait(30)
    mb = 1024 * 1024
    print(f"{'unguarded uvicorn' if args.unguarded else 'meal web'}: {args.connections} × {args.megabytes} MB headers")
    print(f"  RSS before {before / mb:.0f} MB, peak {peak / mb:.0f} MB, after {after / mb:.0f} MB; /healthz {healthy}")
    for outcome in sorted(set(results)):
        print(f"  {results.count(outcome)} connections: {outcome}")


if __name__ == "__main__":
    main()
