"""The Celery application. Tasks are addressed by name (`meal.train_run`); the web app never imports this."""

from __future__ import annotations

from celery import Celery

from app.store.queue import QUEUE, redis_transport_options
from app.store.settings import get_settings


def make_celery(broker_url: str) -> Celery:
    celery = Celery("meal", broker=broker_url, include=["worker.tasks"])
    celery.conf.update(
        task_default_queue=QUEUE,
        task_ignore_result=True,
        # One long job at a time per worker; a message is acknowledged only once its run is finished, so a
        # worker that dies loses nothing. A redelivered message finds its run no longer queued and does nothing.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # ...and on Redis, a message out (unacknowledged) for less than this is not handed to another worker.
        broker_transport_options=redis_transport_options(broker_url),
        # A broker that goes away (a Redis restart) must not cancel the run in training: its message is acknowledged
        # once the connection is back, or redelivered and skipped. Celery 6 is to make cancelling the default.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return celery


celery_app = make_celery(get_settings().broker_url)
