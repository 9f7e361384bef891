"""Managing runs: tags and a note, search and filters, archive, delete with every row and artefact of the run.

On real databases (SQLite and PostgreSQL), a real broker (Redis; nothing consumes it), real artefact stores (a
folder, the embedded run folders, and an S3 server: moto_server) and Chromium for the runs page.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import S3Server, bearer, free_port, session_cookie, tiny_run_config
from sqlalchemy import func, select, text, update

from app.auth import SESSION_COOKIE
from app.main import create_app
from app.schemas import MAX_NOTE_LENGTH, MAX_TAG_LENGTH, MAX_TAGS
from app.store import run_state
from app.store.artifacts import LocalStore, open_store
from app.store.db import session_scope
from app.store.metric_store import Point, ingest
from app.store.models import (
    Evaluation,
    Experiment,
    HeldOutEvaluation,
    MetricRollup,
    ModelExport,
    PlaygroundGeneration,
    Review,
    ReviewItem,
    ReviewQueue,
    Run,
    Sample,
)
from app.store.run_delete import delete_run, run_tables
from app.store.run_state import TransitionError
from app.store.settings import Settings
from meal_core import checkpoint as checkpoints
from meal_core.enums import JobStatus, RunStatus
from worker.tasks import forget_deleted


def run_config(**overrides: Any) -> dict[str, Any]:
    """A valid API `config`; no worker runs here, so the model folder need not exist."""
    return tiny_run_config(Path(tempfile.gettempdir()) / "no-tiny-model", **overrides).model_dump(mode="json")


@pytest.fixture(scope="module")
def settings(database_url: str, api_broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(database_url=database_url, broker_url=api_broker_url, data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def clients(settings: Settings) -> Iterator[dict[str, TestClient]]:
    """API clients (bearer tokens): ana and bo are trainers, rita a reviewer, root an admin."""
    app = create_app(settings)
    who = {"ana": "trainer", "bo": "trainer", "rita": "reviewer", "root": "admin"}
    with TestClient(app) as base:
        yield {name: _as(base, bearer(settings, role, name)) for name, role in who.items()}


def _as(base: TestClient, headers: dict[str, str]) -> TestClient:
    client = TestClient(base.app)
    client.headers.update(headers)
    return client


@pytest.fixture(scope="module")
def ana(clients: dict[str, TestClient]) -> TestClient:
    return clients["ana"]


def create(client: TestClient, name: str = "run", **body: Any) -> dict[str, Any]:
    response = client.post("/api/runs", json={"name": name, "config": run_config(), **body})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def finished(settings: Settings, run_id: int) -> int:
    """The (queued) run stopped at once: a finished run, that may be archived and deleted."""
    with session_scope(settings.database_url) as session:
        assert run_state.request_stop(session, run_id) == RunStatus.STOPPED
    return run_id


def listed(client: TestClient, **params: Any) -> list[str]:
    response = client.get("/api/runs", params=params)
    assert response.status_code == 200, response.text
    return [run["name"] for run in response.json()]


# -- tags and note ---------------------------------------------------------------------------------------------------


def test_tags_and_note_are_set_at_creation_normalised_and_edited(ana: TestClient) -> None:
    run = create(ana, "tagged", tags=["  Baseline Seed ", "baseline-seed", "A/B", "lr:1e-3"], note="first try")
    assert run["tags"] == ["baseline-seed", "a/b", "lr:1e-3"]  # trimmed, lower case, spaces as hyphens, once each
    assert run["note"] == "first try" and run["archived"] is False

    edited = ana.patch(f"/api/runs/{run['id']}", json={"note": "the <b>best</b> so far\nsecond line"})
    assert edited.status_code == 200, edited.text
    assert edited.json()["note"] == "the <b>best</b> so far\nsecond line"
    assert edited.json()["tags"] == ["baseline-seed", "a/b", "lr:1e-3"]  # not given: kept

    edited = ana.patch(f"/api/runs/{run['id']}", json={"tags": ["Final"]})
    assert edited.json()["tags"] == ["final"] and edited.json()["note"].startswith("the <b>best</b>")
    shown = {r["id"]: r for r in ana.get("/api/runs").json()}[run["id"]]
    assert shown["tags"] == ["final"] and shown["note"].startswith("the <b>best</b>")
    assert create(ana, "plain")["tags"] == []


@pytest.mark.parametrize(
    ("body", "where", "says"),
    [
        ({"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]}, ["body", "tags"], "at most 16"),
        ({"tags": ["x" * (MAX_TAG_LENGTH + 1)]}, ["body", "tags", "0"], "at most 32 characters"),
        ({"tags": ["ok", "   "]}, ["body", "tags", "1"], "cannot be empty"),
        ({"tags": ["semi;colon"]}, ["body", "tags", "0"], "letters, digits"),
        ({"tags": ["nul\x00"]}, ["body", "tags", "0"], "letters, digits"),
        ({"tags": "not-a-list"}, ["body", "tags"], "list"),
        ({"note": "n" * (MAX_NOTE_LENGTH + 1)}, ["body", "note"], "at most 4000"),
        ({"note": "a\x00b"}, ["body", "note"], "NUL"),
        ({}, ["body"], "give tags, note or both"),
        ({"note": "x", "name": "renamed"}, ["body", "name"], "Extra inputs"),
    ],
)
def test_invalid_tags_and_notes_are_a_422_naming_the_problem(
    ana: TestClient, body: dict[str, Any], where: list[str], says: str
) -> None:
    run = create(ana, "to edit")
    response = ana.patch(f"/api/runs/{run['id']}", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(item["loc"][: len(where)] == where and says in item["msg"] for item in detail), detail
    if body and "name" not in body:  # the same fields, the same rules at creation
        response = ana.post("/api/runs", json={"name": "x", "config": run_config(), **body})
        assert response.status_code == 422, response.text


# -- search and filters ----------------------------------------------------------------------------------------------


def test_each_filter_and_their_combination(settings: Settings, ana: TestClient) -> None:
    prefix = "flt-"
    brevity = [{"name": "brevity", "type": "brevity"}, {"name": "positivity", "type": "sentiment"}]
    ids = {
        "alpha": create(ana, f"{prefix}Alpha one", tags=["sweep", "lr-high"])["id"],
        "beta": create(ana, f"{prefix}beta 100%_done", tags=["sweep"], config=run_config(algorithm__name="static"))[
            "id"
        ],
        "gamma": create(ana, f"{prefix}Gamma", config=run_config(objectives=brevity))["id"],
    }
    finished(settings, ids["beta"])
    with session_scope(settings.database_url) as session:
        experiment = Experiment(name="e", config={}, baseline="meal")
        session.add(experiment)
        session.flush()
        session.execute(update(Run).where(Run.id == ids["gamma"]).values(experiment_id=experiment.id))
        experiment_id = experiment.id

    def names(**params: Any) -> set[str]:
        return {name.removeprefix(prefix) for name in listed(ana, **params) if name.startswith(prefix)}

    assert names() == {"Alpha one", "beta 100%_done", "Gamma"}
    assert names(name="ALPHA") == {"Alpha one"}  # a part of the name, in any case
    assert names(name="100%_") == {"beta 100%_done"}  # % and _ are characters, not patterns
    assert names(name="%") == {"beta 100%_done"}
    assert names(tag="sweep") == {"Alpha one", "beta 100%_done"}
    assert names(tag=" Lr-High ") == {"Alpha one"}  # normalised as tags are
    assert names(tag="swe") == set()  # a whole tag, not a part
    assert names(status="stopped") == {"beta 100%_done"}
    assert names(status="queued") == {"Alpha one", "Gamma"}
    assert names(algorithm="static") == {"beta 100%_done"}
    assert names(algorithm="meal") == {"Alpha one", "Gamma"}
    assert names(objective="brevity") == {"Gamma"}
    assert names(objective="positivity") == {"Alpha one", "beta 100%_done", "Gamma"}
    assert names(objective="brev") == set()
    assert names(experiment=experiment_id) == {"Gamma"}
    # Combined: every filter must hold.
    assert names(tag="sweep", status="queued") == {"Alpha one"}
    assert names(tag="sweep", algorithm="static", name="beta", objective="positivity") == {"beta 100%_done"}
    assert names(tag="sweep", experiment=experiment_id) == set()
    assert names(name="", tag="", status="", algorithm="", objective="") == names()  # empty: not given


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"name": "a\x00"}, "NUL"),
        ({"tag": "\x00"}, "NUL"),
        ({"status": "\x00"}, "NUL"),
        ({"algorithm": "meal\x00"}, "NUL"),
        ({"objective": "\x00x"}, "NUL"),
        ({"name": "n" * 201}, "at most 200"),
        ({"objective": "o" * 201}, "at most 200"),
        ({"tag": "t" * 33}, "at most 32"),
        ({"tag": "a;b"}, "letters, digits"),
        ({"status": "sleeping"}, "queued"),
        ({"algorithm": "dpo"}, "choose from meal, static"),
        ({"experiment": "0"}, "greater than or equal to 1"),
        ({"experiment": str(2**40)}, "less than or equal to"),
        ({"archived": "maybe"}, "boolean"),
    ],
)
def test_filters_out_of_bounds_are_a_422_naming_them(ana: TestClient, params: dict[str, str], says: str) -> None:
    response = ana.get("/api/runs", params=params)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert any(says in item["msg"] and item["loc"][-1] == next(iter(params)) for item in detail), detail


# -- archive ---------------------------------------------------------------------------------------------------------


def test_archived_runs_leave_the_list_and_come_back(settings: Settings, ana: TestClient) -> None:
    run_id = create(ana, "arch-old")["id"]
    refused = ana.post(f"/api/runs/{run_id}/archive")
    assert refused.status_code == 409 and "queued" in refused.json()["detail"], refused.text
    finished(settings, run_id)
    archived = ana.post(f"/api/runs/{run_id}/archive")
    assert archived.status_code == 200 and archived.json()["archived"] is True, archived.text
    assert "arch-old" not in listed(ana)
    assert "arch-old" in listed(ana, archived="true")
    assert ana.get(f"/api/runs/{run_id}").json()["archived"] is True  # still readable by id

    assert ana.post(f"/api/runs/{run_id}/unarchive").json()["archived"] is False
    assert "arch-old" in listed(ana)
    assert ana.post(f"/api/runs/{run_id}/archive").status_code == 200
    resumed = ana.post(f"/api/runs/{run_id}/resume")  # back at work: back in the list
    assert resumed.status_code == 200 and resumed.json()["archived"] is False, resumed.text
    assert "arch-old" in listed(ana)


# -- permissions ------------------------------------------------------------------------------------------------------


def test_only_the_owner_or_an_admin_edits_archives_or_deletes(
    settings: Settings, clients: dict[str, TestClient]
) -> None:
    ana, bo, rita, root = clients["ana"], clients["bo"], clients["rita"], clients["root"]
    run_id = finished(settings, create(ana, "ana's")["id"])
    changes = [
        ("PATCH", f"/api/runs/{run_id}", {"note": "mine now"}),
        ("POST", f"/api/runs/{run_id}/archive", None),
        ("POST", f"/api/runs/{run_id}/unarchive", None),
        ("DELETE", f"/api/runs/{run_id}", None),
    ]
    for method, path, body in changes:
        by_reviewer = rita.request(method, path, json=body)
        assert by_reviewer.status_code == 403 and "trainer role" in by_reviewer.json()["detail"], by_reviewer.text
        by_other = bo.request(method, path, json=body)
        assert by_other.status_code == 403, by_other.text
        assert (
            by_other.json()["detail"]
            == f"run {run_id} is ana's: only ana or an admin may "
            + {
                "PATCH": "edit it",
                "POST": "archive it" if path.endswith("/archive") else "unarchive it",
                "DELETE": "delete it",
            }[method]
        )
    assert ana.get(f"/api/runs/{run_id}").json()["note"] == ""

    assert root.patch(f"/api/runs/{run_id}", json={"note": "checked by root"}).status_code == 200
    assert root.post(f"/api/runs/{run_id}/archive").status_code == 200
    assert root.delete(f"/api/runs/{run_id}").status_code == 204
    assert ana.get(f"/api/runs/{run_id}").status_code == 404

    own = finished(settings, create(bo, "bo's")["id"])
    assert bo.delete(f"/api/runs/{own}").status_code == 204  # a trainer deletes their own


def test_the_run_page_offers_management_to_the_owner_and_admins_only(settings: Settings, ana: TestClient) -> None:
    run_id = create(ana, "page")["id"]
    for name, role, offered in (("ana", "trainer", "true"), ("bo", "trainer", "false"), ("root", "admin", "true")):
        cookie, _ = session_cookie(settings, role, name)
        with TestClient(ana.app, cookies={SESSION_COOKIE: cookie}) as browser:
            page = browser.get(f"/runs/{run_id}")
        assert page.status_code == 200
        assert f'data-can-manage="{offered}"' in page.text, name


# -- delete ----------------------------------------------------------------------------------------------------------


def fill_every_table(settings: Settings, run_id: int) -> None:
    """A row of the run in every table that refers to runs, and a review item showing one of its samples."""
    with session_scope(settings.database_url) as session:
        ingest(session, run_id, [Point("loss/policy", step, 0.5 * step, 1.0) for step in range(40)])
        session.add(
            Sample(
                run_id=run_id,
                step=1,
                position=0,
                prompt_id="p",
                prompt="p",
                weights=[0.5, 0.5],
                response="r",
                raw_rewards={},
                normalized_rewards={},
                accepted=True,
            )
        )
        session.add(
            Evaluation(
                run_id=run_id,
                step=1,
                objectives=["a", "b"],
                points=[],
                hypervolume=1.0,
                reference_point=[0.0, 0.0],
                controllability={},
                probe={},
            )
        )
        evaluated = {
            "run_id": run_id,
            "objectives": ["a", "b"],
            "points": [],
            "hypervolume": 1.0,
            "reference_point": [0.0, 0.0],
            "controllability": {},
            "probe": {},
        }
        session.add(HeldOutEvaluation(**evaluated, step=1, prompts="uploads/heldout.txt", samples_per_weight=1))
        common = {"run_id": run_id, "created_by": "ana", "status": JobStatus.SUCCEEDED}
        session.add(
            PlaygroundGeneration(
                **common, prompt="p", weights=[[0.5, 0.5]], seed=0, temperature=1.0, max_new_tokens=4, samples=1
            )
        )
        session.add(ModelExport(**common, adapters=True, artifact="export-1.zip"))
        queue = ReviewQueue(name="q", created_by="ana", kind="single", objectives=["a"], source={})
        session.add(queue)
        session.flush()
        for position, shown in enumerate((run_id, run_id + 1000)):
            item = ReviewItem(
                queue_id=queue.id, position=position, prompt="p", responses=[{"text": "r", "run_id": shown, "step": 1}]
            )
            session.add(item)
            session.flush()
            session.add(Review(item_id=item.id, reviewer="rita", ratings={"a": 3}))


def rows_of(settings: Settings, run_id: int) -> dict[str, int]:
    with session_scope(settings.database_url) as session:
        counts = {
            table.name: session.scalar(select(func.count()).select_from(table).where(table.c.run_id == run_id)) or 0
            for table in run_tables()
        }
        counts["run"] = session.scalar(select(func.count()).select_from(Run).where(Run.id == run_id)) or 0
        items = session.scalars(select(ReviewItem.responses)).all()
        counts["review_item"] = sum(1 for responses in items if any(r.get("run_id") == run_id for r in responses))
        return counts


def test_deleting_a_run_deletes_every_row_that_refers_to_it(settings: Settings, ana: TestClient) -> None:
    run_id, other_id = (finished(settings, create(ana, name)["id"]) for name in ("doomed", "kept"))
    fill_every_table(settings, run_id)
    fill_every_table(settings, other_id)
    before = rows_of(settings, run_id)
    # Every table with a run_id is filled here: a table added later fails this until the test fills it too.
    assert all(before.values()), before
    assert {table.name for table in run_tables()} >= {"metric_point", "metric_rollup", "sample", "model_export"}
    kept = rows_of(settings, other_id)

    response = ana.delete(f"/api/runs/{run_id}")
    assert response.status_code == 204, response.text
    assert rows_of(settings, run_id) == dict.fromkeys(before, 0)
    assert rows_of(settings, other_id) == kept
    with session_scope(settings.database_url) as session:
        assert session.scalar(select(func.count()).select_from(MetricRollup)) > 0  # the other run's
        assert session.scalar(select(func.count()).select_from(Review).where(Review.reviewer == "rita")) > 0
    assert ana.get(f"/api/runs/{run_id}").status_code == 404
    assert ana.delete(f"/api/runs/{run_id}").status_code == 404
    # Its id is never given to another run: a new run does not meet anything left of it in a machine's cache.
    assert create(ana, "after")["id"] > max(run_id, other_id)


def test_active_runs_and_runs_with_pending_jobs_are_not_deleted(settings: Settings, ana: TestClient) -> None:
    run_id = create(ana, "busy")["id"]
    refused = ana.delete(f"/api/runs/{run_id}")
    assert refused.status_code == 409 and "queued" in refused.json()["detail"], refused.text
    with session_scope(settings.database_url) as session:
        assert run_state.claim(session, run_id, "w:1")
    assert "running" in ana.delete(f"/api/runs/{run_id}").json()["detail"]
    with session_scope(settings.database_url) as session:
        assert run_state.finish(session, run_id, "w:1", RunStatus.SUCCEEDED)
        export = ModelExport(run_id=run_id, created_by="ana", adapters=True, status=JobStatus.RUNNING)
        session.add(export)
        session.flush()
        export_id = export.id
    refused = ana.delete(f"/api/runs/{run_id}")
    assert refused.status_code == 409 and "export" in refused.json()["detail"], refused.text
    with session_scope(settings.database_url) as session:
        session.execute(update(ModelExport).where(ModelExport.id == export_id).values(status=JobStatus.FAILED))
    assert ana.delete(f"/api/runs/{run_id}").status_code == 204


def test_a_delete_racing_a_resume_never_deletes_the_resumed_run(
    settings: Settings, ana: TestClient, tmp_path: Path
) -> None:
    """The resume's UPDATE comes first and is not committed yet; the delete starts meanwhile. Its gate, one
    conditional UPDATE on the status, waits for the resume's transaction (PostgreSQL: the row's lock; SQLite: the
    database's write lock) and then finds the run queued: refused. A delete that read the status first and deleted
    after would have read "stopped" and deleted a queued run."""
    run_id = finished(settings, create(ana, "raced")["id"])
    outcome: dict[str, object] = {}

    def deleting() -> None:
        try:
            with session_scope(settings.database_url) as session:
                delete_run(session, LocalStore(tmp_path), run_id)
            outcome["deleted"] = True
        except TransitionError as refused:
            outcome["refused"] = str(refused)

    with session_scope(settings.database_url) as resuming:
        run_state.requeue(resuming, run_id, "bo")
        thread = threading.Thread(target=deleting)
        thread.start()
        if settings.database_url.startswith("postgresql"):
            wait_for_a_lock_wait(settings.database_url)  # the delete is blocked on the resume's transaction
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert outcome == {"refused": f"run {run_id} is queued: stop it, or let it finish, before deleting it"}
    assert ana.get(f"/api/runs/{run_id}").json()["status"] == RunStatus.QUEUED


def wait_for_a_lock_wait(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    query = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while True:
        with session_scope(url) as session:
            if session.scalar(query):
                return
        assert time.monotonic() < deadline, "the delete never waited for the resume's lock"
        time.sleep(0.05)


# -- delete: the artefact store ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


def fake_checkpoint(run_dir: Path, iteration: int) -> Path:
    folder = run_dir / "checkpoints" / f"iter-{iteration:06d}"
    (folder / "adapter").mkdir(parents=True)
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 5000)
    (folder / "state.pt").write_bytes(b"s" * 3000)
    (run_dir / "config.json").write_text("{}")
    return folder


@pytest.mark.parametrize("kind", ["embedded", "folder", "s3"])
def test_deleting_a_run_deletes_its_artefacts(
    kind: str, settings: Settings, ana: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: Any
) -> None:
    """Checkpoints and an export in the store (and this machine's cache) are gone; another run's stay."""
    url = ""
    if kind == "folder":
        url = str(tmp_path / "shared-store")
    elif kind == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        url = server.bucket()
    served = settings.model_copy(update={"artifacts_url": url, "runs_dir": tmp_path / "web-cache"})
    store = open_store(served, retry_s=5)
    with TestClient(create_app(served), headers=dict(ana.headers)) as client:
        run_id, other_id = (finished(served, create(client, name)["id"]) for name in ("stored", "neighbour"))
        for run in (run_id, other_id):
            for iteration in (2, 4):
                store.publish(run, fake_checkpoint(store.run_dir(run), iteration), keep_last=3)
            (store.run_dir(run) / "exports").mkdir()
            (store.run_dir(run) / "exports" / "export-1.zip").write_bytes(b"zip")
            store.publish_file(run, "exports/export-1.zip")
        assert store.checkpoint_names(run_id) == ["iter-000002", "iter-000004"]
        # A worker on another machine (a store other than the embedded one has them), with both runs' newest
        # checkpoints in its own cache.
        elsewhere = served.model_copy(update={"runs_dir": tmp_path / "worker-cache"})
        worker_store = open_store(elsewhere, retry_s=5)
        for run in (run_id, other_id):
            assert worker_store.fetch_latest(run) == ("iter-000004" if url else None)

        response = client.delete(f"/api/runs/{run_id}")
        assert response.status_code == 204, response.text

    assert not store.run_dir(run_id).exists()  # this machine's cache
    if url:  # the other machine's copy goes when its worker next starts a task; the neighbour's stays
        assert checkpoints.list_checkpoints(worker_store.run_dir(run_id))
        forget_deleted(elsewhere)
        assert not worker_store.run_dir(run_id).exists()
        assert checkpoints.list_checkpoints(worker_store.run_dir(other_id))[-1].name == "iter-000004"
    assert store.checkpoint_names(run_id) == []
    if url:  # nothing of it under run-<id>/ in the store
        fs, root = store.fs, store.root  # type: ignore[attr-defined]
        fs.invalidate_cache()
        assert fs.find(f"{root}/run-{run_id}") == []
        assert fs.find(f"{root}/run-{other_id}")  # the neighbour's are all there
    assert store.checkpoint_names(other_id) == ["iter-000002", "iter-000004"]
    assert store.fetch_file(other_id, "exports/export-1.zip").read_bytes() == b"zip"


def test_an_unreachable_store_deletes_nothing(
    settings: Settings, ana: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    for key, value in S3Server.KEYS.items():
        monkeypatch.setenv(key, value)
    served = settings.model_copy(update={"artifacts_url": "s3://nowhere/artifacts", "runs_dir": tmp_path})
    run_id = finished(settings, create(ana, "unreachable")["id"])
    fill_every_table(settings, run_id)
    before = rows_of(settings, run_id)
    with TestClient(create_app(served), headers=dict(ana.headers)) as client:
        response = client.delete(f"/api/runs/{run_id}")
    assert response.status_code == 503, response.text
    assert f"run {run_id} not deleted" in response.json()["detail"] and "artefact store" in response.json()["detail"]
    assert rows_of(settings, run_id) == before


# -- the runs page ---------------------------------------------------------------------------------------------------


def test_the_runs_page_filters_and_deletes_through_the_confirm_step(
    tmp_path: Path, page: Any, page_errors: list[str]
) -> None:
    from live_server import live_server

    from app.store.db import get_engine
    from app.store.migrate import upgrade

    settings = Settings(data_dir=tmp_path, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    upgrade(settings.database_url)
    hostile = '<img src=x onerror="window.pwned=1">'
    with session_scope(settings.database_url) as session:
        for name, tags in (("keep me", ["sweep"]), ("delete me", ["sweep", "old"]), ("other", []), ("shelved", [])):
            run = run_state.create_run(session, name, run_config(), 4, "trainer", tags=tags, note=hostile)
            run_state.request_stop(session, run.id)
        run_state.archive(session, run.id)
    try:
        with live_server(settings) as base:
            cookie, _ = session_cookie(settings, "trainer")
            page.context.add_cookies([{"name": SESSION_COOKIE, "value": cookie, "url": base, "httpOnly": True}])
            page.goto(f"{base}/")
            page.wait_for_function("document.querySelectorAll('#runs-body tr[data-run-id]').length === 3")
            assert "shelved" not in page.text_content("#runs-body")  # archived: hidden unless asked for
            page.check("#filter-archived")
            page.wait_for_function("document.querySelectorAll('#runs-body tr[data-run-id]').length === 4")
            assert "archived=true" in page.url and "archived" in page.text_content("#runs-body .badge.archived")
            page.uncheck("#filter-archived")
            page.wait_for_function("document.querySelectorAll('#runs-body tr[data-run-id]').length === 3")

            page.click("#runs-body button.tag >> text=sweep >> nth=0")  # a tag in the list filters by it
            page.wait_for_function("document.querySelectorAll('#runs-body tr[data-run-id]').length === 2")
            assert page.input_value("#filter-tag") == "sweep"
            assert "tag=sweep" in page.url  # the filtered list is a link
            page.fill("#filter-name", "DELETE")
            page.wait_for_function("document.querySelectorAll('#runs-body tr[data-run-id]').length === 1")
            assert "name=DELETE" in page.url and "tag=sweep" in page.url
            page.reload()
            page.wait_for_function("document.querySelectorAll('#runs-body tr[data-run-id]').length === 1")
            assert page.input_value("#filter-name") == "DELETE"
            assert page.text_content("#runs-body .run-link") == "delete me"
            assert page.locator("#runs-body img").count() == 0

            # Deleting from the run page: the button stays disabled until the run's name is typed.
            page.click("#runs-body .run-link")
            page.wait_for_function("document.querySelector('#run-note').textContent !== ''")  # the page's script ran
            assert page.text_content("#run-name") == "delete me"
            assert page.text_content("#run-note") == hostile
            assert page.locator("#run-labels img").count() == 0
            # Tags and note are edited in place; the server normalises the tags.
            page.click("#labels-edit")
            page.fill("#labels-tags", "sweep, Final Pick")
            page.fill("#labels-note", "chosen for the report")
            page.click("#labels-save")
            page.wait_for_function("document.querySelector('#run-note').textContent === 'chosen for the report'")
            assert page.locator("#run-tags .tag").all_text_contents() == ["sweep", "final-pick"]
            page.click("#labels-edit")
            page.fill("#labels-tags", "no;way")
            page.click("#labels-save")
            page.wait_for_function("!document.querySelector('#labels-error').classList.contains('hidden')")
            assert "letters, digits" in page.text_content("#labels-error")
            page.click("#labels-cancel")

            page.click("#delete-button")
            confirm = page.locator("#delete-confirm")
            confirm.wait_for(state="visible")
            assert page.is_disabled("#delete-confirm-button")
            page.fill("#delete-confirm-name", "delete m")
            assert page.is_disabled("#delete-confirm-button")
            page.fill("#delete-confirm-name", "delete me")
            page.click("#delete-confirm-button")
            page.wait_for_url(f"{base}/")
            page.wait_for_function("document.querySelectorAll('#runs-body tr[data-run-id]').length === 2")
            assert "delete me" not in page.text_content("#runs-body")
            assert page.evaluate("window.pwned") is None
    finally:
        get_engine(settings.database_url).dispose()
    assert page_errors == []


def test_the_launch_form_sets_tags_and_a_note(tmp_path: Path, page: Any, page_errors: list[str]) -> None:
    """The new-run form sends tags and a note with the run; a bad tag is shown at the tags field, nothing started."""
    import re

    from live_server import live_server

    from app.store.db import get_engine
    from app.store.migrate import upgrade

    settings = Settings(data_dir=tmp_path, broker_url=f"sqla+sqlite:///{tmp_path / 'broker.sqlite'}")
    upgrade(settings.database_url)
    try:
        with live_server(settings) as base:
            cookie, _ = session_cookie(settings, "trainer")
            page.context.add_cookies([{"name": SESSION_COOKIE, "value": cookie, "url": base, "httpOnly": True}])
            page.goto(f"{base}/runs/new")
            page.wait_for_selector("#run-form[data-ready='1']")
            page.fill("[name='name']", "labelled")
            page.fill("[name='tags']", "Sweep, bad;tag")
            page.fill("[name='note']", "launched from the form")
            page.click("#submit-button")
            error = page.locator(".field:has([name='tags']) .error-msg")
            error.wait_for(state="visible")
            assert "tag 2:" in error.text_content() and "letters, digits" in error.text_content()
            assert "/runs/new" in page.url

            page.fill("[name='tags']", "Sweep, LR High")
            page.click("#submit-button")
            page.wait_for_url(re.compile(r".*/runs/\d+$"))
            page.wait_for_function("document.querySelectorAll('#run-tags .tag').length === 2")
            assert page.locator("#run-tags .tag").all_text_contents() == ["sweep", "lr-high"]
            assert page.text_content("#run-note") == "launched from the form"
    finally:
        get_engine(settings.database_url).dispose()
    assert page_errors == []
