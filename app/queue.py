"""The app's only way to reach workers: messages to the broker, addressed by task name."""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

TRAIN_RUN = "meal.train_run"
PLAYGROUND_GENERATE = "meal.playground_generate"
QUEUE = "meal"  # training: one run per worker, for hours
PLAYGROUND_QUEUE = "playground"  # generations for the playground: seconds each, never behind a training run


@lru_cache
def broker_client(broker_url: str) -> Celery:
    client = Celery("meal-panel", broker=broker_url)
    client.conf.update(
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
        task_ignore_result=True,
        # A request waits on this: with kombu's default retries an unreachable broker took ~6 s to report.
        broker_transport_options={"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2},
        broker_connection_timeout=2,
    )
    return client


def enqueue_training(broker_url: str, run_id: int) -> str:
    """Returns the task id. Raises on a broker that cannot be reached."""
    result = broker_client(broker_url).send_task(TRAIN_RUN, args=[run_id], queue=QUEUE, retry=False)
    return str(result.id)


def enqueue_playground(broker_url: str, generation_id: int) -> str:
    """Returns the task id. Raises on a broker that cannot be reached."""
    result = broker_client(broker_url).send_task(
        PLAYGROUND_GENERATE, args=[generation_id], queue=PLAYGROUND_QUEUE, retry=False
    )
    return str(result.id)
