"""Fault injection with real processes: each test breaks something a deployment depends on while a run trains, and
checks that the run survives with all its records, none twice.

- a worker killed with SIGKILL: its run is failed by the heartbeat sweep and resumed on a new worker;
- two workers and five queued runs: each run trained once, never more than two at a time;
- Redis killed and restarted (its append-only file kept): the running run trains on, a queued one still comes;
- PostgreSQL unreachable for 20 s, mid-run and over a run's end: the recorder holds its rows and writes them once
  the database is back.

Also: the Redis visibility timeout that the worker and the panel configure is the one kombu applies.

Workers are `meal worker` processes, brokers and databases real servers: a Redis server of the test's own (never
the shared one) and PostgreSQL through a TCP proxy that the test can cut. Each test prints a `figures:` line (run
with -s to see it): what docs/reliability.md quotes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from db_fixtures import POSTGRES_URL, migrated_database
from fault_helpers import (
    CHEAP,
    FINISHED,
    HEARTBEAT_TIMEOUT_S,
    OUTAGE_S,
    PACED,
    TIMES,
    Workers,
    checkpointed,
    env_for,
    figures,
    name_of,
    paced_config,
    panel,
    ready,
    stored,
)
from helpers import RedisServer, TcpProxy, tiny_run_config, with_signal
from sqlalchemy.engine import make_url

from app.store.queue import QUEUE, VISIBILITY_TIMEOUT_S
from app.store.settings import Settings

# -- where each test's runs live ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The module's own Redis server: other test modules flush and fill the shared one's databases."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@dataclass
class Deployment:
    database_url: str
    broker_url: str
    data_dir: Path

    def settings(self, **extra: Any) -> Settings:
        return Settings(
            database_url=self.database_url,
            broker_url=self.broker_url,
            data_dir=self.data_dir,
            events_poll_s=0.1,
            allow_python_objectives=True,  # the paced objective; admins only
            **extra,
        )

    def env(self) -> dict[str, str]:
        return env_for(self.database_url, self.broker_url, self.data_dir)


@pytest.fixture(scope="module")
def deployment(database_url: str, private_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """Both setups, following `database_url`: PostgreSQL with a Redis broker (deployed), SQLite with the SQLite
    broker (embedded)."""
    directory = tmp_path_factory.mktemp("faults")
    if database_url.startswith("postgresql"):
        broker = private_redis.url(0)
    else:
        broker = f"sqla+sqlite:///{directory / 'broker.sqlite'}"
    return Deployment(database_url, broker, directory / "data")


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database of the test's own."""
    yield from migrated_database("postgresql", tmp_path)


# -- 1. a worker killed mid-run ----------------------------------------------------------------------------------------


def test_a_killed_worker_s_run_fails_then_resumes_on_a_new_worker(
    deployment: Deployment, workers: Workers, tiny_model_dir: Path
) -> None:
    """SIGKILL (the OOM killer) to the worker after a few iterations: no heartbeat comes any more, so the panel's
    stale-run sweep fails the run; resumed, a new worker continues it from its last checkpoint to the end, and the
    database holds every metric point, sample and evaluation once."""
    total = 6
    config = paced_config(tiny_model_dir, total, eval__every=2)
    first = workers.start(deployment.env())
    ready(first)
    with panel(deployment.settings(heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S), first, role="admin") as p:
        run_id = p.launch(config, "killed-worker")["id"]
        run_dir = deployment.settings().runs_dir / f"run-{run_id}"
        # Progress of iteration n is reported after its checkpoint is saved.
        p.wait_run(run_id, lambda r: r["status"] == "running" and r["iteration"] >= 2, "past iteration 2")
        assert first.process is not None
        with_signal(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=30)
        killed_at = time.monotonic()
        p.watched.clear()
        resume_from = checkpointed(run_dir)
        before = stored(deployment.database_url, run_id)
        recorded = max(before.steps())
        assert 2 <= resume_from < total and resume_from <= recorded

        failed = p.wait_run(run_id, lambda r: r["status"] != "running", "failed", timeout=HEARTBEAT_TIMEOUT_S * 4 + 60)
        failed_after = time.monotonic() - killed_at
        assert failed["status"] == "failed", failed
        assert failed["error"].startswith(f"worker vanished: no heartbeat for {int(HEARTBEAT_TIMEOUT_S)} s")
        assert "resume" in failed["error"] and failed["worker"] == name_of(first)

        second = workers.start(deployment.env())
        p.watched.append(second)
        ready(second)
        resumed = p.post(f"/api/runs/{run_id}/resume")
        assert resumed.status_code == 200, resumed.text
        done = p.wait_finished(run_id)
        finished_after = time.monotonic() - killed_at

    assert (done["status"], done["error"], done["iteration"], done["attempts"]) == ("succeeded", None, total, 2)
    assert done["worker"] == name_of(second)
    assert f"run {run_id}: resuming from iteration {resume_from}" in second.output()
    assert checkpointed(run_dir) == total
    after = stored(deployment.database_url, run_id)
    stored_points = after.check_complete(total, evaluated=[2, 4, 6], objectives=PACED)
    # What the killed worker had stored stays as it was: nothing is lost, nothing overwritten.
    assert {s: after.values[s] for s in before.values} == before.values
    figures(
        "worker SIGKILL",
        broker=deployment.broker_url.split(":")[0],
        killed_after_iteration=recorded,
        resumed_from_checkpoint=resume_from,
        redone_iterations=recorded - resume_from,
        points_stored=stored_points,
        points_lost=0,
        points_duplicated=after.duplicates(),
        failed_after_s=round(failed_after, 1),
        heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        finished_after_s=round(finished_after, 1),
    )


# -- 2. two workers, five runs -----------------------------------------------------------------------------------------


def test_two_workers_train_five_queued_runs_each_once(
    deployment: Deployment, workers: Workers, tiny_model_dir: Path
) -> None:
    total = 2
    config = tiny_run_config(tiny_model_dir, iterations=total, checkpoint__every=0, eval__every=0, **CHEAP)
    pair = workers.start(deployment.env()), workers.start(deployment.env())
    ready(*pair)
    with panel(deployment.settings(), *pair) as p:
        launched = [p.launch(config.model_dump(mode="json"), f"queued-{i}") for i in range(5)]
        ids = [run["id"] for run in launched]
        most_running, deadline = 0, time.monotonic() + 600
        while True:
            listed = {r["id"]: r for r in p.get("/api/runs") if r["id"] in ids}
            most_running = max(most_running, sum(r["status"] in ("running", "stopping") for r in listed.values()))
            if all(r["status"] in FINISHED for r in listed.values()):
                break
            assert time.monotonic() < deadline, f"not all finished in 600 s: {listed}"
            assert all(worker.alive() for worker in pair)
            time.sleep(0.2)
        runs = [p.run(run_id) for run_id in ids]

    assert most_running <= 2
    names = {name_of(worker) for worker in pair}
    for run in runs:
        assert (run["status"], run["attempts"], run["iteration"], run["error"]) == ("succeeded", 1, total, None), run
        assert run["worker"] in names
        stored(deployment.database_url, run["id"]).check_complete(total, evaluated=[total])
    assert {run["worker"] for run in runs} == names, "both workers trained"
    # Each message was taken by one worker, once, and trained its run.
    logs = [worker.output() for worker in pair]
    for run in launched:
        received = [log.count(f"Task meal.train_run[{run['task_id']}] received") for log in logs]
        assert sorted(received) == [0, 1], (run["id"], received)
        assert sum(log.count(f"[{run['task_id']}] succeeded") for log in logs) == 1
        assert (
            sum(
                f"[{run['task_id']}] succeeded" in line and "'succeeded'" in line
                for log in logs
                for line in log.splitlines()
            )
            == 1
        )
    # Never more than two runs in training at once, by the times the database keeps.
    edges = sorted((datetime.fromisoformat(r[at]), change) for r in runs for at, change in TIMES)
    overlap = most = 0
    for _, change in edges:
        overlap += change
        most = max(most, overlap)
    assert most <= 2
    figures(
        "two workers, five runs",
        broker=deployment.broker_url.split(":")[0],
        most_running_polled=most_running,
        most_running_by_times=most,
        runs_per_worker=sorted(sum(r["worker"] == n for r in runs) for n in names),
        trained_twice=0,
    )


def test_the_redis_broker_keeps_a_message_out_for_the_configured_visibility_timeout(
    private_redis: RedisServer,
) -> None:
    """A training message is acknowledged when its run ends (acks_late); kombu's Redis default (1 h) would hand a
    longer run's message to another worker. The worker's and the panel's Celery apps both apply ours."""
    from app.store.queue import broker_client
    from worker.celery_app import make_celery

    assert VISIBILITY_TIMEOUT_S >= 24 * 3600
    for app in (make_celery(private_redis.url(2)), broker_client(private_redis.url(2))):
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            assert channel.visibility_timeout == VISIBILITY_TIMEOUT_S
            assert channel.qos.visibility_timeout == VISIBILITY_TIMEOUT_S
    worker_conf = make_celery(private_redis.url(2)).conf
    assert worker_conf.task_acks_late is True
    assert worker_conf.worker_cancel_long_running_tasks_on_connection_loss is False
    # Embedded mode's SQLite broker gets none: kombu would pass it to create_engine, and the worker would not start.
    assert make_celery("sqla+sqlite:///broker.sqlite").conf.broker_transport_options == {}


# -- 3. Redis restarted mid-run ----------------------------------------------------------------------------------------


def test_a_redis_restart_mid_run_loses_neither_the_run_nor_the_queue(
    postgres: str, workers: Workers, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Deployed mode. Redis is killed (SIGKILL) while a run trains and another waits in its queue, and started again
    on the same port: the run trains on to the end, the queued run is trained after it, and a run launched while
    Redis was down is stored as failed (503), resumable once Redis is back."""
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        deployment = Deployment(postgres, redis.url(0), tmp_path / "data")
        total = 10
        long = paced_config(tiny_model_dir, total, checkpoint__every=2)
        short = tiny_run_config(tiny_model_dir, iterations=2, checkpoint__every=0, eval__every=0, **CHEAP)
        worker = workers.start(deployment.env())
        ready(worker)
        with panel(deployment.settings(), worker, role="admin") as p:
            launched = p.launch(long, "through-a-restart")
            run_id = launched["id"]
            p.wait_run(run_id, lambda r: r["status"] == "running" and r["iteration"] >= 1, "past iteration 1")
            queued_launch = p.launch(short.model_dump(mode="json"), "queued-across-the-restart")
            queued_id = queued_launch["id"]
            with redis.client() as client:
                assert client.llen(QUEUE) == 1, "the queued run's message waits in Redis"

            redis.kill()
            down_at = time.monotonic()
            refused = p.post("/api/runs", {"name": "launched-while-down", "config": short.model_dump(mode="json")})
            assert refused.status_code == 503, refused.text
            (lost,) = [r for r in p.get("/api/runs") if r["name"] == "launched-while-down"]
            assert lost["status"] == "failed" and "broker unavailable" in lost["error"]
            time.sleep(max(0.0, 3 - (time.monotonic() - down_at)))
            redis.start()
            down_s = time.monotonic() - down_at
            with redis.client() as client:
                assert client.llen(QUEUE) == 1, "the queued message survived the restart (append-only file)"
            during = p.run(run_id)
            assert during["status"] == "running" and during["iteration"] < total, "the restart was mid-run"

            # A message sent once Redis is back goes through: the panel's broker connection is not stuck.
            resumed_now = p.post(f"/api/runs/{lost['id']}/resume")
            assert resumed_now.status_code == 200, resumed_now.text

            done = p.wait_finished(run_id)
            queued = p.wait_finished(queued_id)
            resumed = p.wait_finished(lost["id"])
            with redis.client() as client:
                unacked = client.hlen("unacked")  # kombu's: messages taken and not acknowledged
    finally:
        redis.stop()

    assert (done["status"], done["error"], done["iteration"], done["attempts"]) == ("succeeded", None, total, 1)
    assert (queued["status"], queued["attempts"], queued["iteration"]) == ("succeeded", 1, 2)
    assert (resumed["status"], resumed["attempts"], resumed["iteration"]) == ("succeeded", 1, 2)
    after = stored(postgres, run_id)
    stored_points = after.check_complete(total, evaluated=[total], objectives=PACED)
    for other in (queued_id, lost["id"]):
        stored(postgres, other).check_complete(2, evaluated=[2])
    output = worker.output()
    for task_id in (launched["task_id"], queued_launch["task_id"], resumed_now.json()["task_id"]):
        assert output.count(f"Task meal.train_run[{task_id}] received") == 1, task_id
        assert f"Task meal.train_run[{task_id}] succeeded" in output
    assert unacked == 0, "every message was acknowledged, the one taken before the restart too"
    figures(
        "redis restart",
        redis_down_s=round(down_s, 1),
        iteration_at_restart=during["iteration"],
        points_stored=stored_points,
        points_lost=0,
        points_duplicated=after.duplicates(),
        queued_messages_lost=0,
        worker_saw_connection_loss="Connection to broker lost" in output,
    )


# -- 4. PostgreSQL unreachable mid-run ---------------------------------------------------------------------------------


@dataclass
class Outage:
    """A worker that reaches PostgreSQL through a proxy; the panel reaches it directly, as an admin (the paced
    objective is a `python` one)."""

    deployment: Deployment
    proxy: TcpProxy
    worker_env: dict[str, str]

    def settings(self) -> Settings:
        return self.deployment.settings()  # the default heartbeat timeout: 120 s


@pytest.fixture
def outage(postgres: str, private_redis: RedisServer, tmp_path: Path) -> Iterator[Outage]:
    target = make_url(POSTGRES_URL)
    proxy = TcpProxy((target.host or "127.0.0.1", target.port or 5432))
    deployment = Deployment(postgres, private_redis.url(1), tmp_path / "data")
    through_proxy = make_url(postgres).set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = env_for(through_proxy, deployment.broker_url, deployment.data_dir)
    try:
        yield Outage(deployment, proxy, env)
    finally:
        proxy.close()


def test_a_database_outage_mid_run_is_waited_out(outage: Outage, workers: Workers, tiny_model_dir: Path) -> None:
    """PostgreSQL is unreachable for 20 s while a run trains (every connection cut, new ones refused): training goes
    on, the recorder keeps its rows and retries, and once the database is back the run ends succeeded with every
    iteration's points and samples stored once."""
    total = 30  # at a second or more per iteration (the paced objective), the outage ends well before the run
    proxy = outage.proxy
    worker = workers.start(outage.worker_env)
    ready(worker)
    with panel(outage.settings(), worker, role="admin") as p:
        run_id = p.launch(paced_config(tiny_model_dir, total), "through-an-outage")["id"]
        run_dir = p.settings.runs_dir / f"run-{run_id}"
        p.wait_run(run_id, lambda r: r["status"] == "running" and r["iteration"] >= 2, "past iteration 2")
        proxy.cut()
        cut_at = time.monotonic()
        before = p.run(run_id)["iteration"]
        dropped = proxy.dropped
        while time.monotonic() - cut_at < OUTAGE_S:
            assert worker.alive()
            time.sleep(0.5)
        trained_during = checkpointed(run_dir)
        stalled = p.run(run_id)
        proxy.restore()
        restored_at = time.monotonic()
        assert stalled["status"] == "running", "the panel's heartbeat timeout (120 s) outlasts the outage"
        assert stalled["iteration"] == before, "nothing reached the database during the outage"
        assert before < trained_during < total, "training went on while the database was away, and is not over"
        # What the outage held back is written within a few flushes.
        p.wait_run(run_id, lambda r: r["iteration"] >= trained_during, "caught up", timeout=120)
        caught_up_after = time.monotonic() - restored_at
        done = p.wait_finished(run_id)

    assert (done["status"], done["error"], done["iteration"], done["attempts"]) == ("succeeded", None, total, 1)
    assert "flush failed, will retry" in worker.output()
    after = stored(outage.deployment.database_url, run_id)
    stored_points = after.check_complete(total, evaluated=[total], objectives=PACED)
    figures(
        "postgresql outage mid-run",
        outage_s=OUTAGE_S,
        connections_cut=dropped,
        iteration_at_cut=before,
        iterations_trained_during_outage=trained_during - before,
        caught_up_after_s=round(caught_up_after, 1),
        points_stored=stored_points,
        points_lost=0,
        points_duplicated=after.duplicates(),
    )


def test_a_database_outage_over_the_end_of_a_run_is_waited_out(
    outage: Outage, workers: Workers, tiny_model_dir: Path
) -> None:
    """The database goes away during a run's last iteration and comes back after training is over: the worker
    waits (up to the recorder's give_up_s, 60 s) to write the last records and the run's status, rather than
    losing them and leaving the run `running` until the heartbeat sweep fails it."""
    total = 3
    proxy = outage.proxy
    worker = workers.start(outage.worker_env)
    ready(worker)
    with panel(outage.settings(), worker, role="admin") as p:
        run_id = p.launch(paced_config(tiny_model_dir, total), "outage-at-the-end")["id"]
        run_dir = p.settings.runs_dir / f"run-{run_id}"
        p.wait_run(run_id, lambda r: r["status"] == "running" and r["iteration"] >= total - 1, "in its last iteration")
        proxy.cut()
        cut_at = time.monotonic()
        assert p.run(run_id)["status"] == "running", "the outage began before the run's end"
        # Training ends (the last checkpoint comes after the final evaluation), then the worker tries to store it.
        deadline = time.monotonic() + 40
        while checkpointed(run_dir) < total or f"run {run_id}: succeeded" not in worker.output():
            assert time.monotonic() < deadline, "training did not end during the outage"
            time.sleep(0.2)
        time.sleep(3)  # the last flush fails, and is retried
        assert f"run {run_id}: last records not stored yet, will retry" in worker.output()
        assert p.run(run_id)["status"] == "running"
        outage_s = time.monotonic() - cut_at
        proxy.restore()
        restored_at = time.monotonic()
        done = p.wait_finished(run_id, timeout=90)
        stored_after = time.monotonic() - restored_at

    assert (done["status"], done["error"], done["iteration"], done["attempts"]) == ("succeeded", None, total, 1)
    after = stored(outage.deployment.database_url, run_id)
    stored_points = after.check_complete(total, evaluated=[total], objectives=PACED)
    figures(
        "postgresql outage over the end of a run",
        outage_s=round(outage_s, 1),
        stored_after_s=round(stored_after, 1),
        points_stored=stored_points,
        points_lost=0,
        points_duplicated=after.duplicates(),
    )
