"""An evaluation and a sample are defined once, in meal_core, and everything else is derived from that definition:
the row the worker stores (worker/recorder.py) and the API schema (app/schemas.py). The tables must hold every
field; these tests show all three follow the record."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from app.schemas import EvaluationOut, HeldOutEvaluationOut, SampleOut, record_schema
from app.store.models import Evaluation, HeldOutEvaluation, Sample
from meal_core.evaluation import EvaluationResult, FrontPoint, HeldOutResult
from meal_core.recorder import SampleRecord
from worker.recorder import evaluation_row, sample_rows

ROW_OWN = {
    "evaluation": {"id", "run_id", "created_at"},
    "held_out_evaluation": {"id", "run_id", "created_at"},
    "sample": {"id", "run_id", "position"},
}


def record_fields(record: type) -> set[str]:
    return {f.name for f in dataclasses.fields(record)}


def result(**fields: object) -> EvaluationResult:
    point = FrontPoint([1.0, 0.0], [0.5, -0.5], [3.0, -20.0], True)
    values: dict[str, object] = {
        "step": 4,
        "objectives": ["a", "b"],
        "points": [point],
        "hypervolume": 1.25,
        "reference_point": [-3.0, -3.0],
        "controllability": {"a": 0.3, "b": 0.2},
    }
    return EvaluationResult(**{**values, **fields})  # type: ignore[arg-type]


def test_every_record_field_has_its_column_and_no_column_is_left_over() -> None:
    for record, table in ((EvaluationResult, Evaluation), (HeldOutResult, HeldOutEvaluation), (SampleRecord, Sample)):
        columns = {c.name for c in table.__table__.columns}
        assert columns == record_fields(record) | ROW_OWN[table.__tablename__]


def test_the_stored_row_and_the_api_schema_carry_exactly_the_records_fields() -> None:
    row = evaluation_row(7, result())
    assert set(row) == record_fields(EvaluationResult) | {"run_id"}
    assert row["points"] == [
        {"weights": [1.0, 0.0], "rewards": [0.5, -0.5], "raw_rewards": [3.0, -20.0], "on_front": True}
    ]
    assert set(EvaluationOut.model_fields) == record_fields(EvaluationResult) | {"id", "created_at"}
    sample = SampleRecord(1, "p1", "Hi", [0.5, 0.5], "Hello", {"a": 1.0}, {"a": 0.1}, True)
    assert set(sample_rows(7, [sample])[0]) == record_fields(SampleRecord) | {"run_id", "position"}
    assert set(SampleOut.model_fields) == record_fields(SampleRecord) | {"id", "position"}


def test_a_held_out_evaluation_is_an_evaluation_and_what_it_was_asked_on() -> None:
    """Its record extends the evaluation's, so a field added to EvaluationResult reaches both tables' checks."""
    held = HeldOutResult.of(result(), "uploads/heldout.txt", 3)
    assert record_fields(HeldOutResult) == record_fields(EvaluationResult) | {"prompts", "samples_per_weight"}
    row = evaluation_row(7, held)
    assert (row["prompts"], row["samples_per_weight"], row["hypervolume"]) == ("uploads/heldout.txt", 3, 1.25)
    assert set(HeldOutEvaluationOut.model_fields) == record_fields(HeldOutResult) | {"id", "created_at"}


def test_a_field_added_to_the_record_reaches_the_row_and_the_schema_with_no_other_edit() -> None:
    @dataclasses.dataclass
    class WithNovelty(EvaluationResult):
        novelty: float = 0.0

    extended = WithNovelty(**dataclasses.asdict(result()) | {"points": result().points, "novelty": 0.75})
    assert evaluation_row(3, extended)["novelty"] == 0.75
    schema = record_schema("WithNoveltyOut", WithNovelty, Evaluation, leading={"id": (int, ...)})
    assert schema.model_fields["novelty"].annotation is float
    out = schema.model_validate({"id": 1, **evaluation_row(3, extended)})
    assert out.model_dump()["novelty"] == 0.75


def test_nullable_columns_are_optional_in_the_schema_so_old_rows_still_validate() -> None:
    """degenerate_share and responses came with a later migration: rows from before hold NULL there."""
    row = {"id": 1, "created_at": datetime.now(UTC), **evaluation_row(1, result())}
    old = EvaluationOut.model_validate(row | {"degenerate_share": None, "responses": None})
    assert old.model_dump()["degenerate_share"] is None
    assert EvaluationOut.model_validate(row).model_dump(mode="json")["points"][0]["on_front"] is True
