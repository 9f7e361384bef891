"""Every set of named states, in one module: run and job statuses, run phases, roles, review queues and reviews.

The engine, the tables, the API schemas (so OpenAPI lists each set as an `enum`), the CLI, the workers and the
browser (app/static/js/contracts.js is written from this module) all take them from here. They are StrEnums, so a
member is its own string: stored, compared and sent as JSON as it always was.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"  # a stop was asked for; the worker stops after its current iteration
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


#: A worker has it, or will: it may be stopped, not resumed.
ACTIVE_RUN_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.STOPPING})
#: Nothing will change it any more, unless it is resumed.
FINISHED_RUN_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED})
#: Resume continues these from their last checkpoint.
RESUMABLE_RUN_STATUSES = frozenset({RunStatus.FAILED, RunStatus.STOPPED})
#: A worker holds the run (and sends heartbeats).
HELD_RUN_STATUSES = frozenset({RunStatus.RUNNING, RunStatus.STOPPING})
#: Stop applies: a queued run stops at once, a running one after its current iteration.
STOPPABLE_RUN_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})


class RunPhase(StrEnum):
    """What a held run is doing now, each with its own progress (done of total units, none where the phase has no
    count) and ETA: the recorder's `phase`. Set only while a worker holds the run; cleared when it ends."""

    LOADING = "loading"  # the model, its adapters and the objectives' models; a resumed run's checkpoint
    CALIBRATING = "calibrating"  # sampling the base policy for μ, σ and the probe set: responses
    EVALUATING = "evaluating"  # the weight grid × held-out prompts: generations
    WARM_START = "warm_start"  # hindsight-labelled base-model samples before the loop: responses
    TRAINING = "training"  # the loop: iterations
    CHECKPOINTING = "checkpointing"  # saving (and publishing) a checkpoint


class JobStatus(StrEnum):
    """A playground generation's status."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


#: Not finished yet: the page keeps polling.
PENDING_JOB_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class Role(StrEnum):
    """What a user may do. Each role can do everything the roles below it can."""

    REVIEWER = "reviewer"  # reviews generations in the queues they are shown
    TRAINER = "trainer"  # launches, stops and resumes runs, uses the playground, builds review queues
    ADMIN = "admin"  # everything, and manages users

    def allows(self, needed: Role) -> bool:
        return ROLE_ORDER.index(self) >= ROLE_ORDER.index(needed)


ROLE_ORDER = (Role.REVIEWER, Role.TRAINER, Role.ADMIN)


class QueueKind(StrEnum):
    """What a review queue's items are."""

    SINGLE = "single"  # one response, rated 1–5 per objective and overall
    COMPARISON = "comparison"  # two responses A and B, judged A / B / tie


class QueueStatus(StrEnum):
    OPEN = "open"
    CLOSED = "closed"  # no more reviews; the summary and export stay


class ReviewStatus(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
