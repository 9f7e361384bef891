"""The API against its own OpenAPI schema: schemathesis generates requests for every operation (valid ones and
invalid ones), sends them to the app in-process as an admin with an API token, and checks every answer: never a
server error, only documented status codes, and content types and bodies that match the schema. The run's event
stream is fuzzed too: each case reads it for a bounded time (STREAM_READ_S) or number of events.

The database is a real SQLite one in tmp_path, the broker a real SQLite one too (POST /api/runs enqueues), with two
runs, their samples and metrics, a playground generation and a review queue in it; valid cases of an operation
with ids in its path name one of those rows some of the time (every such id at least once). Nothing is mocked.

SCHEMA_FUZZ_SCALE=10 multiplies the number of cases, for a deeper search than CI's.
"""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from helpers import bearer
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.store.settings import Settings

SCALE = float(os.environ.get("SCHEMA_FUZZ_SCALE", "1"))
#: Cases per operation and generation mode: 30 operations with inputs and 7 without make about 1,050 cases, in about
#: a minute on two busy cores.
MAX_EXAMPLES = {GenerationMode.POSITIVE: 24, GenerationMode.NEGATIVE: 12}
#: Fewer valid cases where each one hashes a password (Argon2id: about a second on a busy core); their invalid
#: cases are refused before any hashing.
FEWER_VALID = {"POST /api/auth/password": 5, "POST /api/users": 10}
MIN_CASES = 1000

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

#: The run's event stream never ends (a keep-alive every 15 s): a case reads it until STREAM_EVENTS events have
#: come or STREAM_READ_S have passed, whichever is first, and its answer is checked like any other (status, content
#: type; a 200 must be text/event-stream and start with its retry line).
STREAM = "GET /api/runs/{run_id}/events"
STREAM_EVENTS = 4
STREAM_READ_S = 1.5

#: Invalid input may also be refused as too large (413: over the server's body limit): schemathesis' default list
#: of the statuses that reject invalid data leaves 413 out. (Also: no schemathesis.toml found around is read.)
CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {"negative_data_rejection": {"expected-statuses": [400, 401, 403, 404, 409, 413, 422, 429]}},
        "max-stream-events": STREAM_EVENTS,
    }
)

#: Operations not fuzzed, and why. Only ones that cannot be fuzzed in-process: nothing is left out for failing.
EXCLUDED: set[tuple[str, str]] = set()


#: Path parameters naming rows that seed_database and the admin's first tokens made.
REAL = {
    "run_id": [1, 2],
    "queue_id": [1],
    "item_id": [1, 6],
    "generation_id": [1],
    "export_id": [1, 2],
    "experiment_id": [1],
    "token_id": [1, 2],
    "name": ["admin", "reviewer"],
}


def seed_database(settings: Settings) -> None:
    """Two runs (one finished, with samples and metrics; one queued), a playground generation with outputs, two
    exports (one written, one queued) and a review queue of the finished run's samples: ids 1 and 2 of most tables
    are real rows."""
    import zipfile

    from sqlalchemy import update

    from app import auth, review
    from app.store import metric_store, run_state
    from app.store.db import session_scope
    from app.store.models import Evaluation, Experiment, ModelExport, PlaygroundGeneration, Run, Sample
    from meal_core.config import RunConfig
    from meal_core.enums import JobStatus, QueueKind, Role, RunStatus

    config = RunConfig().model_dump(mode="json")
    objectives = [o["name"] for o in config["objectives"]]
    with session_scope(settings.database_url) as session:
        auth.create_user(session, "reviewer", Role.REVIEWER, "a long enough password")
        finished = run_state.create_run(session, "finished", config, 2, "admin").id
        run_state.create_run(session, "queued", config, 2, "admin")
        assert run_state.claim(session, finished, "worker@test")
        assert run_state.finish(session, finished, "worker@test", RunStatus.SUCCEEDED)
        for step in (1, 2):
            for position in range(3):
                w = position / 2
                session.add(
                    Sample(
                        run_id=finished,
                        step=step,
                        position=position,
                        prompt_id=f"p{position}",
                        prompt=f"prompt {position}",
                        weights=[w, 1 - w][: len(objectives)],
                        response=f"response {step}.{position}",
                        raw_rewards={name: 0.1 * position for name in objectives},
                        normalized_rewards={name: 0.0 for name in objectives},
                        accepted=position % 2 == 0,
                    )
                )
        points = [
            metric_store.Point(f"reward/{name}", step, 0.5 * step, float(step))
            for name in objectives
            for step in (1, 2)
        ]
        metric_store.ingest(session, finished, [*points, metric_store.Point("loss", 1, 1.0, 1.0)])
        output = {"weights": [0.5, 0.5], "auto": False, "samples": [{"text": "hi", "scores": {}}]}
        session.add(
            PlaygroundGeneration(
                run_id=finished,
                created_by="admin",
                prompt="hello",
                weights=[[0.5, 0.5], [1.0, 0.0]],
                seed=0,
                temperature=0.7,
                max_new_tokens=8,
                samples=1,
                status=JobStatus.SUCCEEDED,
                outputs=[output, {**output, "weights": [1.0, 0.0]}],
            )
        )
        zipped = settings.runs_dir / f"run-{finished}" / "exports" / "run-1-merged-1.zip"
        zipped.parent.mkdir(parents=True)
        with zipfile.ZipFile(zipped, "w") as archive:
            archive.writestr("run-1-merged-1/meal_export.json", "{}")
        for status, artifact in ((JobStatus.SUCCEEDED, zipped.name), (JobStatus.QUEUED, None)):
            session.add(
                ModelExport(run_id=finished, created_by="admin", weights=[0.5, 0.5], status=status, artifact=artifact)
            )
        # An experiment whose first run finished with an evaluation, the other still queued.
        experiment = Experiment(
            name="experiment",
            config={"base": {"iterations": 2}, "seeds": [0], "algorithms": ["meal", "static"]},
            baseline="meal",
            created_by="admin",
        )
        session.add(experiment)
        session.flush()
        session.execute(update(Run).where(Run.id == finished).values(experiment_id=experiment.id, variant="meal"))
        run_state.create_run(
            session, "experiment static", config, 2, "admin", experiment_id=experiment.id, variant="static"
        )
        session.add(
            Evaluation(
                run_id=finished,
                step=2,
                objectives=objectives,
                points=[],
                hypervolume=1.0,
                reference_point=[-3.0] * len(objectives),
                controllability={name: 0.5 for name in objectives},
                probe={},
                degenerate_share=0.0,
                responses=4,
            )
        )
        items = review.sample_items(session, review.SampleSelection(run_id=finished), objectives)
        review.create_queue(session, "queue", "admin", QueueKind.SINGLE, False, objectives, items, {"type": "samples"})


@pytest.fixture()
def api_schema(embedded_settings: Settings) -> Iterator[Any]:
    seed_database(embedded_settings)
    app = create_app(embedded_settings)
    schema = schemathesis.openapi.from_asgi(
        "/openapi.json", app, config=CONFIG, headers=bearer(embedded_settings, "admin")
    )

    @schema.auth()
    class AdminToken:
        """A fresh admin token whenever the one in use stops working: cases may revoke it (DELETE /api/tokens/{id}
        with its id), and a 401 fetches a new one and replays the request."""

        def get(self, case: Any, context: Any) -> str:
            return bearer(embedded_settings, "admin")["Authorization"]

        def set(self, case: Any, data: str, context: Any) -> None:
            case.headers = {**(case.headers or {}), "Authorization": data}

    yield schema
    asgi.shutdown_lifespans()  # the app's lifespan (its stale-run sweeper) ends with the test


def operations(schema: Any) -> list[Any]:
    found = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) not in EXCLUDED:
            found.append(operation)
    return found


def has_inputs(operation: Any) -> bool:
    return bool(operation.body) or any(True for _ in operation.iter_parameters())


def cases_of(operation: Any, mode: GenerationMode) -> st.SearchStrategy[Any]:
    """Schemathesis' cases of the operation; where the path has ids, valid ones also with each of the REAL ids (as
    often as the rest of the request varies: Hypothesis does not send the same case twice)."""
    generated = operation.as_strategy(generation_mode=mode)
    names = [parameter.name for parameter in operation.path_parameters]
    if mode == GenerationMode.NEGATIVE or not names:
        return generated
    real = [
        operation.as_strategy(generation_mode=mode, path_parameters={name: value})
        for name in names
        for value in REAL[name]
    ]
    return st.one_of(st.one_of(real), generated)


streams: Counter[str] = Counter()  # 200 answers of the event stream, per mode
events: Counter[str] = Counter()  # events read from them


def fuzz(operation: Any, mode: GenerationMode, cases: Counter[str]) -> None:
    """Up to MAX_EXAMPLES[mode] cases of one operation, each sent and checked; the first failure (shrunk) raises."""
    label = f"{operation.label} ({mode.value})"
    checks = CHECKS if mode == GenerationMode.POSITIVE else [*CHECKS, negative_data_rejection]
    examples = MAX_EXAMPLES[mode]
    if mode == GenerationMode.POSITIVE:
        examples = FEWER_VALID.get(operation.label, examples)

    stream = operation.label == STREAM

    @hypothesis.seed(zlib.crc32(label.encode()))  # fixed per operation and mode: CI runs the same cases every time
    @hypothesis.settings(
        max_examples=max(1, round(examples * SCALE)),
        deadline=None,
        database=None,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=cases_of(operation, mode))
    def check(case: Any) -> None:
        cases[label] += 1
        if not stream:
            case.call_and_validate(checks=checks)
            return
        response = case.call_and_validate(checks=checks, timeout=STREAM_READ_S)
        if response.status_code == 200:
            streams[label] += 1
            assert response.headers["content-type"][0].startswith("text/event-stream"), response.headers
            assert response.content.startswith(b"retry: 2000"), response.content[:100]
            events[label] += response.content.count(b"\nevent: ")

    check()


def test_every_operation_answers_as_documented(api_schema: Any) -> None:
    cases: Counter[str] = Counter()
    failures: dict[str, BaseException] = {}
    for operation in operations(api_schema):
        for mode in MAX_EXAMPLES:
            if mode == GenerationMode.NEGATIVE and not has_inputs(operation):
                continue  # no parameters and no body: nothing to make invalid
            try:
                fuzz(operation, mode, cases)
            except (Exception, BaseExceptionGroup) as error:  # schemathesis raises a BaseExceptionGroup of failures
                failures[f"{operation.label} ({mode.value})"] = error
    report = "\n\n".join(f"== {label}\n{error}" for label, error in failures.items())
    assert not failures, f"{len(failures)} of {len(cases)} operations and modes failed:\n{report}"
    assert sum(cases.values()) >= MIN_CASES * min(SCALE, 1), cases
    # The stream was read, not only refused: open on both real runs, with their events.
    assert streams[f"{STREAM} (positive)"] >= 2 and events[f"{STREAM} (positive)"] >= 2, (streams, events)
    print(f"{sum(cases.values())} cases; event stream: {dict(streams)} streams read, {dict(events)} events")
