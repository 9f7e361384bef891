"""The app's only way to reach workers: messages to the broker, addressed by task name."""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)
TRAIN_RUN = "meal.train_run"
PLAYGROUND_GENERATE = "meal.playground_generate"
EXPORT_MODEL = "meal.export_model"
QUEUE = "meal"  # training: one run per worker, for hours
# Generations for the playground and model exports: seconds to minutes each, never behind a training run.
PLAYGROUND_QUEUE = "playground"
# Redis (kombu) puts a message that a worker took but has not acknowledged back in the queue once it has been out
# this long (kombu's default: 1 hour). Workers acknowledge a training message only when its run ends (acks_late), so
# with the default every run longer than an hour had its message handed to the next idle worker, which found the run
# taken and skipped it. Recovery never waits on a redelivery: a dead worker's run is failed by the heartbeat sweep
# (or by `meal up` at once) and resuming it sends a new message. So a week: longer than any run we expect, and a run
# that is longer still only gets one such harmless skip.
VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def redis_transport_options(broker_url: str) -> dict[str, Any]:
    """Transport options for a Redis broker; none for others (kombu's SQLAlchemy transport, embedded mode's, hands
    options it does not know to create_engine, which refuses them)."""
    if broker_url.partition(":")[0] in ("redis", "rediss", "sentinel"):
        return {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return {}


@lru_cache
def broker_client(broker_url: str) -> Celery:
    client = Celery("meal-panel", broker=broker_url)
    client.conf.update(
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        # A request waits on this: with kombu's default retries an unreachable broker took ~6 s to report.
        broker_transport_options={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
            **redis_transport_options(broker_url),  # as the workers', though only a consumer uses it
        },
        broker_connection_timeout=2,
    )
    return client


class BrokerUnavailable(RuntimeError):
    """The broker refused the message twice, the second time on a fresh connection. The message is short and
    safe to show: the broker's own error (which may hold SQL or URLs) goes to the log only."""


def _send(broker_url: str, task: str, argument: int, queue: str) -> str:
    """Send, and on failure send once more on a new client: a broken connection (a broker restarted, a database
    file that was read-only for a moment) must not stick until the web server restarts."""
    for attempt in (1, 2):
        try:
            return str(broker_client(broker_url).send_task(task, args=[argument], queue=queue, retry=False).id)
        except Exception as error:
            broker_client.cache_clear()
            if attempt == 2:
                log.warning("broker refused %s(%s): %s", task, argument, error)
                raise BrokerUnavailable(f"broker unavailable ({type(error).__name__})") from error
    raise AssertionError("unreachable")


def enqueue_training(broker_url: str, run_id: int) -> str:
    """Returns the task id. Raises BrokerUnavailable on a broker that cannot be reached."""
    return _send(broker_url, TRAIN_RUN, run_id, QUEUE)


def enqueue_playground(broker_url: str, generation_id: int) -> str:
    """Returns the task id. Raises BrokerUnavailable on a broker that cannot be reached."""
    return _send(broker_url, PLAYGROUND_GENERATE, generation_id, PLAYGROUND_QUEUE)


def enqueue_export(broker_url: str, export_id: int) -> str:
    """Returns the task id. Raises BrokerUnavailable on a broker that cannot be reached."""
    return _send(broker_url, EXPORT_MODEL, export_id, PLAYGROUND_QUEUE)
