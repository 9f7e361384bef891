"""Experiments through the API (embedded mode: SQLite database and broker): launched as runs created and queued
like any other, refused whole with the field named, listed, and read back with the table, the paired comparison
and stability computed from the runs' stored evaluations and metrics. A reviewer cannot launch."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import bearer, session_cookie, tiny_run_config
from sqlalchemy import select, update

from app.auth import SECRET_FILE
from app.main import create_app
from app.store import metric_store, run_state
from app.store.db import session_scope
from app.store.models import Evaluation, HeldOutEvaluation, Run, utcnow
from app.store.settings import Settings
from meal_core.enums import RunStatus


def base_config() -> dict[str, Any]:
    return tiny_run_config(Path(tempfile.gettempdir()) / "no-tiny-model", iterations=2).model_dump(mode="json")


def launch(client: TestClient, **fields: Any) -> Any:
    experiment = {"base": base_config(), "seeds": 2, "algorithms": ["meal", "static"], **fields}
    return client.post("/api/experiments", json={"name": "cmp", "experiment": experiment})


def finish_with_records(settings: Settings, run_id: int, hypervolumes: list[float]) -> None:
    """What a worker would leave: the run succeeded after 90 s, an evaluation per step, training metrics."""
    with session_scope(settings.database_url) as session:
        assert run_state.claim(session, run_id, "worker@test")
        session.execute(update(Run).where(Run.id == run_id).values(started_at=utcnow() - timedelta(seconds=90)))
        assert run_state.finish(session, run_id, "worker@test", RunStatus.SUCCEEDED)
        for step, hv in enumerate(hypervolumes):
            corners = [{"weights": [1.0, 0.0], "rewards": [hv, -hv]}, {"weights": [0.0, 1.0], "rewards": [-hv, hv]}]
            session.add(
                Evaluation(
                    run_id=run_id,
                    step=step,
                    objectives=["positivity", "readability"],
                    points=[{"weights": [0.5, 0.5], "rewards": [0.0, 0.0]}, *corners],
                    hypervolume=hv,
                    reference_point=[-3.0, -3.0],
                    controllability={"positivity": 0.1 * step, "readability": 0.0},
                    probe={},
                    controllability_grid={"positivity": 0.2 * step, "readability": 0.5},
                    controllability_null={"positivity": 0.12, "readability": 0.13},
                    degenerate_share=0.0,
                    responses=12,
                )
            )
        points = [metric_store.Point("train/generated_responses", s, 12.0, float(s)) for s in (1, 2)]
        points += [metric_store.Point("reward/positivity", s, 0.1 * s, float(s)) for s in (1, 2)]
        metric_store.ingest(session, run_id, points)


def test_launch_list_and_read_an_experiment(embedded_settings: Settings) -> None:
    settings = embedded_settings
    with TestClient(create_app(settings), headers=bearer(settings)) as client:
        response = launch(
            client, vary={"algorithm.base_loss": ["sft", "sft+pairwise"]}, baseline="static-base_loss=sft"
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["runs"] == 8 and body["finished"] == 0 and body["baseline"] == "static-base_loss=sft"
        assert body["created_by"] == "trainer"
        members = body["members"]
        assert {m["variant"] for m in members} == {
            "meal-base_loss=sft",
            "meal-base_loss=sft+pairwise",
            "static-base_loss=sft",
            "static-base_loss=sft+pairwise",
        }
        assert sorted({m["seed"] for m in members}) == [0, 1]
        assert all(m["status"] == RunStatus.QUEUED for m in members)
        # Each run was created and queued as POST /api/runs does: a run of its own, with a task id.
        run = client.get(f"/api/runs/{members[0]['id']}").json()
        assert run["task_id"] and run["config"]["seed"] == 0 and run["name"] == f"cmp · {members[0]['variant']}/seed-0"
        assert body["compute_differences"][0]["quantity"] == "meta_steps"
        assert body["compute_differences"][0]["ratio"] is None  # static takes none: no finite ratio
        assert body["compute"]["meal-base_loss=sft"]["training_responses"] == 2 * 4 * 3

        listed = client.get("/api/experiments").json()
        assert [(e["id"], e["runs"]) for e in listed] == [(body["id"], 8)]

        # Two seeds of two variants finished: the table, the paired comparison and stability follow.
        by_key = {(m["variant"], m["seed"]): m["id"] for m in members}
        finish_with_records(settings, by_key[("static-base_loss=sft", 0)], [1.0, 1.5, 2.0])
        finish_with_records(settings, by_key[("static-base_loss=sft", 1)], [1.0, 1.2, 1.0])
        finish_with_records(settings, by_key[("meal-base_loss=sft", 0)], [1.0, 2.0, 3.0])
        finish_with_records(settings, by_key[("meal-base_loss=sft", 1)], [1.0, 1.5, 3.0])
        found = client.get(f"/api/experiments/{body['id']}").json()
        assert found["finished"] == 4
        report = found["report"]
        assert report["table"]["static-base_loss=sft"]["hv_final"]["mean"] == 1.5
        assert report["table"]["meal-base_loss=sft"]["training_responses"]["mean"] == 24
        # Each run's own figures: the last evaluation's per objective, and its wall time over every attempt.
        run = report["runs"]["meal-base_loss=sft"]["1"]
        assert run["hv_final"] == 3.0 and run["corner/positivity"] == 3.0 and run["corner/readability"] == 3.0
        assert (run["control/positivity"], run["control_grid/positivity"], run["null/readability"]) == (0.2, 0.4, 0.13)
        assert run["attempts"] == 1 and 1.5 <= run["wall_minutes"] < 60
        assert report["table"]["static-base_loss=sft"]["corner/readability"]["mean"] == 1.5
        compared = report["comparison"]["meal-base_loss=sft"]["hv_final"]  # differences 1 and 2
        assert compared["n"] == 2 and compared["mean_difference"] == 1.5 and compared["seeds"] == [0, 1]
        assert 0 < compared["p"] < 1
        assert report["stability"]["static-base_loss=sft"]["hypervolume"]["jumpiness"] == pytest.approx(
            (0.5 + 0.2) / 2
        )  # mean |Δ| per seed
        # The curves average each step over the seeds that have it, runs still training included.
        curves = report["curves"]["meal-base_loss=sft"]
        hypervolume = [(p["step"], p["n"], p["mean"]) for p in curves["hypervolume"]]
        assert hypervolume == [(0, 2, 1.0), (1, 2, 1.75), (2, 2, 3.0)]
        assert [p["mean"] for p in curves["reward/positivity"]] == pytest.approx([0.1, 0.2])
        running = by_key[("meal-base_loss=sft+pairwise", 0)]
        with session_scope(settings.database_url) as session:
            assert run_state.claim(session, running, "worker@test")
            metric_store.ingest(session, running, [metric_store.Point("pref_weight_learned/positivity", 1, 0.6, 1.0)])
        live = client.get(f"/api/experiments/{body['id']}", params={"curve_points": 2}).json()["report"]
        assert live["curves"]["meal-base_loss=sft+pairwise"]["pref_weight_learned/positivity"] == [
            {"step": 1, "n": 1, "mean": 0.6, "sd": None, "low": None, "high": None}
        ]
        assert "meal-base_loss=sft+pairwise" not in live["table"]  # the table waits for finished runs
        assert [p["step"] for p in live["curves"]["meal-base_loss=sft"]["hypervolume"]] == [0, 2]  # thinned
        too_many = client.get(f"/api/experiments/{body['id']}", params={"curve_points": 10**6})
        assert too_many.status_code == 422 and too_many.json()["detail"][0]["loc"] == ["query", "curve_points"]
        # Against another baseline.
        other = client.get(f"/api/experiments/{body['id']}", params={"baseline": "meal-base_loss=sft"}).json()
        assert other["report"]["comparison"]["static-base_loss=sft"]["hv_final"]["mean_difference"] == -1.5
        unknown = client.get(f"/api/experiments/{body['id']}", params={"baseline": "ppo"})
        assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["query", "baseline"]
        assert client.get("/api/experiments/999").status_code == 404


def test_an_invalid_grid_is_refused_whole_with_the_field_named(embedded_settings: Settings) -> None:
    settings = embedded_settings
    with TestClient(create_app(settings), headers=bearer(settings)) as client:
        response = launch(client, vary={"algorithm.base_loss": ["sft", "bogus"]})
        assert response.status_code == 422
        assert response.json()["detail"][0]["loc"] == ["body", "experiment", "vary", "algorithm", "base_loss"]
        response = launch(client, vary={"algorithm.nope": [1]})
        assert response.status_code == 422 and "no such config field" in response.text
        assert launch(client, algorithms=[]).status_code == 422
        assert launch(client, seeds=0).status_code == 422
        assert client.get("/api/experiments").json() == []
    with session_scope(settings.database_url) as session:
        assert list(session.scalars(select(Run))) == []


def test_an_experiments_tags_and_note_go_to_every_run_and_bad_ones_are_refused(embedded_settings: Settings) -> None:
    settings = embedded_settings

    def with_labels(client: TestClient, **labels: Any) -> Any:
        experiment = {"base": base_config(), "seeds": 2, "algorithms": ["meal", "static"]}
        return client.post("/api/experiments", json={"name": "cmp", "experiment": experiment, **labels})

    with TestClient(create_app(settings), headers=bearer(settings)) as client:
        created = with_labels(client, tags=["Power ", "seed-sweep"], note="meal against static")
        assert created.status_code == 201, created.text
        for member in created.json()["members"]:
            run = client.get(f"/api/runs/{member['id']}").json()
            assert run["tags"] == ["power", "seed-sweep"] and run["note"] == "meal against static"
        # The runs list finds them by tag, as any run.
        assert len(client.get("/api/runs", params={"tag": "power"}).json()) == 4
        refused = with_labels(client, tags=["x" * 1000])
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][:2] == ["body", "tags"]
        refused = with_labels(client, note="a\x00b")
        assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][:2] == ["body", "note"]
    with session_scope(settings.database_url) as session:
        assert len(list(session.scalars(select(Run)))) == 4  # the refused ones created nothing


def test_a_reviewer_cannot_launch_or_read_experiments(embedded_settings: Settings) -> None:
    settings = embedded_settings
    with TestClient(create_app(settings), headers=bearer(settings, "reviewer")) as client:
        assert launch(client).status_code == 403
        assert client.get("/api/experiments").status_code == 403
    with session_scope(settings.database_url) as session:
        assert list(session.scalars(select(Run))) == []


def test_the_experiment_page(embedded_settings: Settings) -> None:
    from app.auth import CSRF_HEADER, SESSION_COOKIE

    settings = embedded_settings
    with TestClient(create_app(settings), headers=bearer(settings)) as client:
        experiment_id = launch(client).json()["id"]
    cookie, csrf = session_cookie(settings)
    with TestClient(create_app(settings), cookies={SESSION_COOKIE: cookie}, headers={CSRF_HEADER: csrf}) as browser:
        page = browser.get(f"/experiments/{experiment_id}")
        assert page.status_code == 200
        assert f'data-experiment-id="{experiment_id}"' in page.text and "/static/js/experiment.js" in page.text
        assert browser.get("/static/js/experiment.js").status_code == 200
        listing = browser.get("/experiments")
        assert listing.status_code == 200 and "/static/js/experiments.js" in listing.text
        assert 'href="/experiments"' in listing.text  # in the nav
        assert browser.get("/experiments/999").status_code == 404
        # Each run names its experiment and variant, and its page links back.
        run = browser.get("/api/runs").json()[0]
        assert run["experiment_id"] == experiment_id and run["variant"] in ("meal", "static")
        assert f'href="/experiments/{experiment_id}"' in browser.get(f"/runs/{run['id']}").text
    cookie, csrf = session_cookie(settings, "reviewer")
    with TestClient(create_app(settings), cookies={SESSION_COOKIE: cookie}, headers={CSRF_HEADER: csrf}) as browser:
        assert browser.get(f"/experiments/{experiment_id}").status_code == 403


def held_out_row(run_id: int, hypervolume: float, control: float) -> HeldOutEvaluation:
    """What the worker stores after a run's last iteration (worker.tasks.evaluate_held_out)."""
    return HeldOutEvaluation(
        run_id=run_id,
        step=2,
        objectives=["positivity", "readability"],
        points=[
            {"weights": [1.0, 0.0], "rewards": [0.4, -0.1], "raw_rewards": [0.9, 40.0], "on_front": True},
            {"weights": [0.0, 1.0], "rewards": [-0.2, 0.3], "raw_rewards": [0.5, 60.0], "on_front": True},
        ],
        hypervolume=hypervolume,
        reference_point=[-3.0, -3.0],
        controllability={"positivity": control, "readability": control},
        probe={},
        controllability_grid={"positivity": 1.0, "readability": 1.0},
        controllability_null={"positivity": 0.2, "readability": 0.2},
        degenerate_share=0.0,
        responses=8,
        prompts="uploads/heldout.txt",
        samples_per_weight=2,
    )


def test_a_held_out_prompt_file_is_refused_with_the_field_named(embedded_settings: Settings) -> None:
    """held_out.prompts passes the data paths' policy (app/config_policy.py); every refusal is a 422 naming the
    field, and nothing is created."""
    settings = embedded_settings
    where = ["body", "experiment", "held_out", "prompts"]
    with TestClient(create_app(settings), headers=bearer(settings)) as client:
        for prompts, says in (
            ("/etc/passwd", "outside the folders this server allows"),
            (str(settings.data_dir / SECRET_FILE), "one of the server's own files"),
            (str(settings.data_dir / "notes.txt"), "in the data folder but not in"),
            (str(settings.data_dir / "uploads" / "a\x00b.txt"), "NUL"),
            ("x" * 501, "at most 500 characters"),
            ("", "at least 1 character"),
        ):
            response = launch(client, held_out={"prompts": prompts})
            assert response.status_code == 422, (prompts[:40], response.text)
            (error,) = response.json()["detail"]
            assert error["loc"] == where and says in error["msg"], error
        for held_out, field in (
            ({"prompts": "builtin:eval", "samples_per_weight": 0}, "samples_per_weight"),
            ({"prompts": "builtin:eval", "max_prompts": 10_001}, "max_prompts"),
            ({"prompts": "builtin:eval", "shuffle": True}, "shuffle"),
        ):
            response = launch(client, held_out=held_out)
            assert response.status_code == 422, response.text
            assert response.json()["detail"][0]["loc"] == ["body", "experiment", "held_out", field]
        assert client.get("/api/experiments").json() == []
        # Under the uploads folder (or MEAL_ALLOWED_ROOTS) it is taken, and kept with the experiment.
        upload = str(settings.data_dir / "uploads" / "heldout.txt")
        response = launch(client, held_out={"prompts": upload, "samples_per_weight": 2})
        assert response.status_code == 201, response.text
        assert response.json()["config"]["held_out"] == {"prompts": upload, "samples_per_weight": 2, "max_prompts": 200}
    with session_scope(settings.database_url) as session:
        assert len(list(session.scalars(select(Run)))) == 4


def test_the_report_reads_each_runs_held_out_evaluation_apart_from_its_training_evaluations(
    embedded_settings: Settings,
) -> None:
    settings = embedded_settings
    with TestClient(create_app(settings), headers=bearer(settings)) as client:
        body = launch(client, held_out={"prompts": "builtin:eval"}, baseline="static").json()
        by_key = {(m["variant"], m["seed"]): m["id"] for m in body["members"]}
        for (variant, seed), run_id in by_key.items():
            finish_with_records(settings, run_id, [1.0, 2.0, 3.0])
            if variant == "meal" or seed == 0:  # static seed 1 lacks one: its held-out figures are not there
                with session_scope(settings.database_url) as session:
                    session.add(
                        held_out_row(run_id, 1.0 + seed + (variant == "meal"), 0.5 if variant == "meal" else 0.1)
                    )
        table = client.get(f"/api/experiments/{body['id']}").json()["report"]["table"]
        assert table["meal"]["held_out_hv"]["n"] == 2 and table["meal"]["held_out_hv"]["mean"] == 2.5
        assert table["static"]["held_out_hv"]["n"] == 1 and table["static"]["held_out_hv"]["mean"] == 1.0
        assert table["meal"]["held_out_control"]["mean"] == 0.5
        assert table["meal"]["held_out_corner/positivity"]["mean"] == 0.4
        assert table["meal"]["held_out_null/readability"]["mean"] == 0.2
        # The training evaluations are read as before: hv_final is the last step's, not the held-out one's.
        assert table["meal"]["hv_final"]["mean"] == 3.0 and table["meal"]["hv_gain"]["mean"] == 2.0

        run_id = by_key[("meal", 0)]
        assert [e["step"] for e in client.get(f"/api/runs/{run_id}/evaluations").json()] == [0, 1, 2]
        held = client.get(f"/api/runs/{run_id}/held-out-evaluation").json()
        assert (held["prompts"], held["samples_per_weight"], held["hypervolume"]) == ("uploads/heldout.txt", 2, 2.0)
        assert client.get(f"/api/runs/{by_key[('static', 1)]}/held-out-evaluation").json() is None
        assert client.get("/api/runs/999/held-out-evaluation").status_code == 404


# -- hostile and unlucky launches ------------------------------------------------------------------------------------

LONG_FLOAT = 0.12345678901234566  # repr: 19 characters in a variant's name


@pytest.fixture()
def served(database_url: str, api_broker_url: str, tmp_path: Path) -> Settings:
    """SQLite and PostgreSQL (only PostgreSQL enforces the columns' lengths); the database is the module's."""
    return Settings(database_url=database_url, broker_url=api_broker_url, data_dir=tmp_path)


def experiment_ids(client: TestClient) -> list[int]:
    return [e["id"] for e in client.get("/api/experiments").json()]


def test_a_grid_too_large_is_refused_before_it_is_built(served: Settings) -> None:
    """The count comes from the lists' lengths (16 fields of 2 values are 65 536 variants; never built), and vary
    takes at most 16 fields; either way a 422 naming vary."""
    fields = [
        "temperature", "top_p", "exploration_share", "dirichlet_alpha", "corner_share", "clip", "top_q",
        "ric_quantile", "max_repeated_ngram_share", "max_unknown_word_share", "hindsight_temperature",
        "hindsight_mix", "weight_lr", "meta_lr", "policy_lr", "max_grad_norm", "pairwise_beta",
    ]  # fmt: skip
    with TestClient(create_app(served), headers=bearer(served)) as client:
        before = experiment_ids(client)
        for count, says in ((8, "512 variants; at most 256"), (16, "131072 variants"), (17, "at most 16 items")):
            vary = {f"algorithm.{name}": [0.5, 0.25] for name in fields[:count]}
            response = launch(client, seeds=1, vary=vary)
            assert response.status_code == 422, response.text
            (error,) = response.json()["detail"]
            assert error["loc"] == ["body", "experiment", "vary"] and says in error["msg"], error
        assert experiment_ids(client) == before


def test_long_names_fit_the_database_or_are_refused_with_the_field_named(served: Settings) -> None:
    with TestClient(create_app(served), headers=bearer(served)) as client:
        fields = ["temperature", "top_p", "exploration_share", "corner_share"]
        vary = {f"algorithm.{name}": [LONG_FLOAT] for name in fields}
        body = {"base": base_config(), "seeds": [4_000_000_000], "algorithms": ["meal_no_learnable"], "vary": vary}
        response = client.post("/api/experiments", json={"name": "n" * 120, "experiment": body})
        assert response.status_code == 201, response.text
        (member,) = response.json()["members"]
        variant = "meal_no_learnable-" + "-".join(f"{name}={LONG_FLOAT!r}" for name in fields)
        assert member["variant"] == variant and len(variant) > 100
        # The run's name keeps its variant and seed whole; the experiment's name gives way.
        assert len(member["name"]) == 200 and member["name"].endswith(f"… · {variant}/seed-4000000000")
        vary["algorithm.clip"] = [LONG_FLOAT]  # a sixth setting: the variant's name alone is over 160
        response = client.post("/api/experiments", json={"name": "n", "experiment": body})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "experiment", "vary"] and "over 160 characters" in error["msg"]


@pytest.mark.parametrize("seeds", [[-1], [2**32], [0, 2**70]])
def test_seeds_a_run_cannot_take_are_refused(served: Settings, seeds: list[int]) -> None:
    with TestClient(create_app(served), headers=bearer(served)) as client:
        before = experiment_ids(client)
        response = launch(client, seeds=seeds)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"][:3] == ["body", "experiment", "seeds"]
        assert experiment_ids(client) == before


def test_an_unreachable_broker_leaves_every_run_failed_and_resumable(served: Settings) -> None:
    """Not the first run failed and the rest queued for a message that was never sent."""
    unreachable = served.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})  # nothing listens on port 1
    with TestClient(create_app(unreachable), headers=bearer(unreachable)) as client:
        response = launch(client)
        assert response.status_code == 503, response.text
        assert "4 of its 4 runs not queued" in response.json()["detail"]
        newest = experiment_ids(client)[0]
        members = client.get(f"/api/experiments/{newest}").json()["members"]
        assert [m["status"] for m in members] == [RunStatus.FAILED] * 4
        for member in members:
            run = client.get(f"/api/runs/{member['id']}").json()
            assert "broker" in run["error"], run


def test_an_experiment_is_deleted_with_its_runs_by_its_owner_or_an_admin(served: Settings) -> None:
    """Every run's rows and artefacts, then the experiment; refused whole (nothing deleted) to another trainer, a
    reviewer, or while a run is not finished."""
    from app.store.artifacts import open_store

    store = open_store(served)
    owner = TestClient(create_app(served), headers=bearer(served, "trainer", "olga"))
    other = TestClient(create_app(served), headers=bearer(served, "trainer", "tom"))
    reviewer = TestClient(create_app(served), headers=bearer(served, "reviewer"))
    admin = TestClient(create_app(served), headers=bearer(served, "admin"))
    with owner, other, reviewer, admin:
        created = [launch(owner).json() for _ in range(2)]
        ids = [[m["id"] for m in c["members"]] for c in created]
        for run_id in ids[0] + ids[1]:
            (store.run_dir(run_id) / "checkpoints").mkdir(parents=True)
            (store.run_dir(run_id) / "config.json").write_text("{}")
        for run_id in ids[0][:3]:
            finish_with_records(served, run_id, [1.0, 2.0])
        first = f"/api/experiments/{created[0]['id']}"
        assert reviewer.delete(first).status_code == 403
        refused = other.delete(first)
        assert refused.status_code == 403 and "olga's" in refused.json()["detail"]
        refused = owner.delete(first)  # its fourth run is still queued
        assert refused.status_code == 409 and f"{ids[0][3]} (queued)" in refused.json()["detail"]
        assert all(owner.get(f"/api/runs/{i}").status_code == 200 for i in ids[0])
        finish_with_records(served, ids[0][3], [1.0])
        assert owner.delete(first).status_code == 204
        assert owner.get(first).status_code == 404
        assert all(owner.get(f"/api/runs/{i}").status_code == 404 for i in ids[0])
        assert not any(store.run_dir(i).exists() for i in ids[0])
        with session_scope(served.database_url) as session:
            assert session.scalars(select(Evaluation).where(Evaluation.run_id.in_(ids[0]))).first() is None
        # The other experiment is untouched; an admin may delete it once its runs have finished.
        assert all(store.run_dir(i).exists() for i in ids[1])
        for run_id in ids[1]:
            with session_scope(served.database_url) as session:
                assert run_state.request_stop(session, run_id, "olga")
        assert admin.delete(f"/api/experiments/{created[1]['id']}").status_code == 204
        assert all(admin.get(f"/api/runs/{i}").status_code == 404 for i in ids[1])
