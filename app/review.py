"""Review of generations by a team: building queues, one review per reviewer per item, agreement, export.

A queue holds items of one kind: `single` (one response, rated 1–5 per objective and overall) or `comparison` (two
responses A and B, judged A / B / tie per objective and overall). In a blind queue reviewers see neither run,
step, weights nor reward scores — before submitting or after (a throwaway submission would reveal the condition,
and the review could then be changed) — nor, unless they are trainers, the queue's source; comparisons are shown
in a random order per item (stored as `swapped`; reviews are always stored in the item's own A/B order). A
submitted review changes only by another complete submission while the queue is open: a draft save after
submitting is refused (it emptied the submitted review before).

The summary answers the question every team asks — does our reward model agree with us? — per objective:
Krippendorff's alpha between reviewers (ordinal for ratings, nominal for comparisons, the `krippendorff` package),
their raw pairwise agreement, and the agreement of the team with the reward objective (Spearman between the mean
rating and the score for ratings, pairwise accuracy for comparisons).
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Literal

import numpy as np
from scipy.stats import spearmanr
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.models import PlaygroundGeneration, Review, ReviewItem, ReviewQueue, Sample, utcnow
from meal_core.enums import QueueKind, QueueStatus, ReviewStatus

RATINGS = ("1", "2", "3", "4", "5")
CHOICES = ("A", "B", "tie")
OVERALL = "overall"
MAX_ITEMS = 2000


class ReviewError(ValueError):
    """A queue or review that cannot be stored; the message names the field."""


class ReviewConflict(ReviewError):
    """A change the review's state does not allow (a 409)."""


# -- building queues --------------------------------------------------------------------------------------------------


@dataclass
class SampleSelection:
    run_id: int
    step_min: int | None = None
    step_max: int | None = None
    weight_objective: str | None = None  # with weight_min / weight_max: the region of weights to take samples from
    weight_min: float = 0.0
    weight_max: float = 1.0
    accepted_only: bool = False
    random_n: int | None = None
    seed: int = 0


def sample_items(session: Session, selection: SampleSelection, objectives: list[str]) -> list[dict[str, Any]]:
    """Single-response items from a run's recorded samples, by step range, weight region, acceptance, random N."""
    query = select(Sample).where(Sample.run_id == selection.run_id).order_by(Sample.step, Sample.position)
    if selection.step_min is not None:
        query = query.where(Sample.step >= selection.step_min)
    if selection.step_max is not None:
        query = query.where(Sample.step <= selection.step_max)
    if selection.accepted_only:
        query = query.where(Sample.accepted.is_(True))
    rows = list(session.scalars(query.limit(100_000)))
    if selection.weight_objective is not None:
        if selection.weight_objective not in objectives:
            raise ReviewError(f"source.weight_objective: one of {', '.join(objectives)}")
        k = objectives.index(selection.weight_objective)
        rows = [s for s in rows if selection.weight_min <= s.weights[k] <= selection.weight_max]
    if selection.random_n is not None and len(rows) > selection.random_n:
        rows = random.Random(selection.seed).sample(rows, selection.random_n)
    return [
        {
            "prompt": s.prompt,
            "responses": [
                {
                    "text": s.response,
                    "run_id": s.run_id,
                    "step": s.step,
                    "weights": dict(zip(objectives, s.weights, strict=False)),
                    "scores": s.raw_rewards,
                    "origin": f"sample {s.id}",
                }
            ],
        }
        for s in rows
    ]


def comparison_items(session: Session, generation_ids: Sequence[int], objectives: list[str]) -> list[dict[str, Any]]:
    """Comparison items from playground generations: every two weight vectors against each other, each pair with
    responses no other pair shows (the next unused sample of each), so that revealing one item's weights gives away
    nothing of another's. Pairs whose weights have no unused sample left are not made."""
    items = []
    for generation_id in generation_ids:
        generation = session.get(PlaygroundGeneration, generation_id)
        if generation is None or not generation.outputs:
            raise ReviewError(f"source.generation_ids: generation {generation_id} does not exist or has no outputs")
        outputs = generation.outputs
        used = [0] * len(outputs)
        for a, b in combinations(range(len(outputs)), 2):
            if used[a] >= len(outputs[a]["samples"]) or used[b] >= len(outputs[b]["samples"]):
                continue
            chosen = [(outputs[a], outputs[a]["samples"][used[a]]), (outputs[b], outputs[b]["samples"][used[b]])]
            used[a], used[b] = used[a] + 1, used[b] + 1
            items.append(
                {
                    "prompt": generation.prompt,
                    "responses": [
                        {
                            "text": sample["text"],
                            "run_id": generation.run_id,
                            "checkpoint": generation.checkpoint,
                            "weights": dict(zip(objectives, output["weights"], strict=False)),
                            "scores": sample["scores"],
                            "origin": f"playground {generation.id}",
                        }
                        for output, sample in chosen
                    ],
                }
            )
    return items


#: What a 5 and a 1 mean for each built-in objective type (a comparison asks which response is better on it).
RUBRIC_BY_TYPE = {
    "brevity": "5: says what is needed in as few words as it can; 1: padded, rambling or repetitive.",
    "coverage": "5: covers every point the prompt calls for, with substance; 1: says almost nothing.",
    "sentiment": "5: warm and positive in tone; 1: negative, cold or hostile.",
    "readability": "5: plain words and short sentences, easy to follow; 1: hard to read.",
    "relevance": "5: answers exactly what was asked; 1: off the topic.",
}
OVERALL_RUBRIC = "5: the response you would most like to receive; 1: one you would not accept."


def default_rubric(objectives: Sequence[tuple[str, str]], kind: QueueKind) -> dict[str, str]:
    """objective (name, type) → what its rating means; "overall" too. Types without a text of their own (reward
    models, python functions) name the objective."""
    rubric = {
        name: RUBRIC_BY_TYPE.get(kind_of, f"5: the best on “{name}” as the run scores it; 1: the worst.")
        for name, kind_of in objectives
    }
    rubric["overall"] = OVERALL_RUBRIC
    if kind == QueueKind.COMPARISON:  # A / B / tie: the better one on that objective, by the same description
        rubric = {name: f"Which is better here? {text}" for name, text in rubric.items()}
    return rubric


def check_rubric(given: dict[str, str], objectives: list[str]) -> None:
    unknown = sorted(set(given) - {*objectives, "overall"})
    if unknown:
        raise ReviewError(
            f"rubric: {', '.join(unknown)} not an objective of the run ({', '.join(objectives)}) or 'overall'"
        )


def create_queue(
    session: Session,
    name: str,
    created_by: str,
    kind: QueueKind,
    blind: bool,
    objectives: list[str],
    items: list[dict[str, Any]],
    source: dict[str, Any],
    seed: int = 0,
    rubric: dict[str, str] | None = None,
) -> ReviewQueue:
    if not items:
        raise ReviewError("source: nothing matched: the queue would be empty")
    if len(items) > MAX_ITEMS:
        raise ReviewError(f"source: {len(items)} items; at most {MAX_ITEMS} per queue (use random_n)")
    queue = ReviewQueue(
        name=name,
        created_by=created_by,
        kind=kind,
        blind=blind,
        objectives=objectives,
        source=source,
        rubric=rubric or {},
    )
    session.add(queue)
    session.flush()
    order = list(range(len(items)))
    shuffler = random.Random(seed)
    if blind:
        shuffler.shuffle(order)  # the show order gives nothing away either
    for position, index in enumerate(order):
        item = items[index]
        session.add(
            ReviewItem(
                queue_id=queue.id,
                position=position,
                prompt=item["prompt"],
                responses=item["responses"],
                swapped=blind and kind == QueueKind.COMPARISON and shuffler.random() < 0.5,
            )
        )
    session.flush()
    return queue


# -- reviews ----------------------------------------------------------------------------------------------------------


def _swap(choice: str, swapped: bool) -> str:
    return {"A": "B", "B": "A"}.get(choice, choice) if swapped else choice


def validate_review(
    queue: ReviewQueue, ratings: dict[str, Any], overall: str | None, submit: bool
) -> tuple[dict[str, str], str | None]:
    """Values as the reviewer's form sends them (display order for comparisons); raises ReviewError."""
    allowed = RATINGS if queue.kind == QueueKind.SINGLE else CHOICES
    unknown = set(ratings) - set(queue.objectives)
    if unknown:
        raise ReviewError(
            f"ratings: unknown objective(s) {', '.join(sorted(unknown))}; this queue has {', '.join(queue.objectives)}"
        )
    clean = {}
    for name, value in ratings.items():
        if value is None:
            continue
        text = str(value)
        if text not in allowed:
            raise ReviewError(f"ratings.{name}: one of {', '.join(allowed)}")
        clean[name] = text
    if overall is not None and str(overall) not in allowed:
        raise ReviewError(f"overall: one of {', '.join(allowed)}")
    if submit:
        missing = [n for n in queue.objectives if n not in clean]
        if missing or overall is None:
            missing_text = ", ".join(missing or ["overall"])
            raise ReviewError(
                f"a submitted review needs every objective and the overall judgement; missing {missing_text}"
            )
    return clean, None if overall is None else str(overall)


def save_review(
    session: Session,
    queue: ReviewQueue,
    item: ReviewItem,
    reviewer: str,
    ratings: dict[str, Any],
    overall: str | None,
    comment: str,
    submit: bool,
) -> Review:
    """A reviewer's draft or submission for an item, stored in the item's own A/B order. One per reviewer and item;
    a draft becomes a submission, and a submission is replaced by another complete one, until the queue closes. A
    draft save of a submitted review is a ReviewConflict: it would leave a submitted review half-filled."""
    if queue.status != QueueStatus.OPEN:
        raise ReviewConflict("the queue is closed: reviews can no longer change")
    clean, overall = validate_review(queue, ratings, overall, submit)
    if queue.kind == QueueKind.COMPARISON:
        clean = {k: _swap(v, item.swapped) for k, v in clean.items()}
        overall = None if overall is None else _swap(overall, item.swapped)
    review = session.scalar(select(Review).where(Review.item_id == item.id, Review.reviewer == reviewer))
    if review is None:
        review = Review(item_id=item.id, reviewer=reviewer)
        session.add(review)
    elif review.status == ReviewStatus.SUBMITTED and not submit:
        raise ReviewConflict("this review is submitted: change it with a complete submission (submit: true)")
    review.ratings, review.overall, review.comment = clean, overall, comment
    review.status = ReviewStatus.SUBMITTED if submit else ReviewStatus.DRAFT
    review.updated_at = utcnow()
    session.flush()
    return review


def item_view(queue: ReviewQueue, item: ReviewItem, review: Review | None) -> dict[str, Any]:
    """An item as one reviewer may see it: blind queues show each response's text only (no run, step, checkpoint,
    weights, scores nor origin), submitted or not, and show comparisons in the item's random order."""
    responses = list(item.responses)
    swapped = queue.kind == QueueKind.COMPARISON and item.swapped
    if swapped:
        responses = responses[::-1]
    shown = [{"text": r["text"]} if queue.blind else r for r in responses]
    mine = None
    if review is not None:
        mine = {
            "ratings": {k: _swap(v, swapped) for k, v in review.ratings.items()},
            "overall": None if review.overall is None else _swap(review.overall, swapped),
            "comment": review.comment,
            "status": review.status,
        }
    return {"id": item.id, "position": item.position, "prompt": item.prompt, "responses": shown, "review": mine}


# -- agreement --------------------------------------------------------------------------------------------------------


@dataclass
class Judgements:
    """Submitted judgements of one queue, per target (each objective and "overall"): (item id, reviewer) → value."""

    values: dict[str, dict[tuple[int, str], str]] = field(default_factory=dict)
    items: dict[int, ReviewItem] = field(default_factory=dict)

    def reviewers(self) -> list[str]:
        return sorted({reviewer for table in self.values.values() for _, reviewer in table})


def judgements(session: Session, queue: ReviewQueue) -> Judgements:
    found = Judgements()
    rows = session.execute(
        select(ReviewItem, Review)
        .join(Review, Review.item_id == ReviewItem.id)
        .where(ReviewItem.queue_id == queue.id, Review.status == ReviewStatus.SUBMITTED)
    )
    for item, review in rows:
        found.items[item.id] = item
        for target in [*queue.objectives, OVERALL]:
            value = review.overall if target == OVERALL else review.ratings.get(target)
            if value is not None:
                found.values.setdefault(target, {})[(item.id, review.reviewer)] = value
    return found


def _code(value: str, kind: QueueKind) -> float:
    return float(value) if kind == QueueKind.SINGLE else float(CHOICES.index(value))


def krippendorff_alpha(table: dict[tuple[int, str], str], kind: QueueKind) -> float | None:
    """Alpha over reviewers × items (ordinal for ratings, nominal for A/B/tie); None where it is undefined (fewer
    than two reviewers, or no item judged twice, or no variation at all)."""
    import krippendorff

    reviewers = sorted({r for _, r in table})
    items = sorted({i for i, _ in table})
    if len(reviewers) < 2:
        return None
    data = np.full((len(reviewers), len(items)), np.nan)
    for (item, reviewer), value in table.items():
        data[reviewers.index(reviewer), items.index(item)] = _code(value, kind)
    if not any((~np.isnan(data[:, j])).sum() >= 2 for j in range(len(items))):
        return None
    if len({v for v in data.flatten() if not np.isnan(v)}) < 2:
        return None
    level: Literal["ordinal", "nominal"] = "ordinal" if kind == QueueKind.SINGLE else "nominal"
    value_domain = [1.0, 2.0, 3.0, 4.0, 5.0] if kind == QueueKind.SINGLE else [0.0, 1.0, 2.0]
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement=level, value_domain=value_domain))


def pairwise_agreement(table: dict[tuple[int, str], str]) -> float | None:
    """Share of pairs of reviewers, over items both judged, who gave the same value."""
    by_item: dict[int, list[str]] = {}
    for (item, _), value in table.items():
        by_item.setdefault(item, []).append(value)
    pairs = [a == b for values in by_item.values() for a, b in combinations(values, 2)]
    return float(np.mean(pairs)) if pairs else None


def reward_agreement(
    table: dict[tuple[int, str], str], items: dict[int, ReviewItem], objective: str, kind: QueueKind
) -> float | None:
    """Ratings: Spearman between each item's mean rating and its score on the objective (needs 3 items).
    Comparisons: the share of non-tie judgements that chose the response scoring higher on the objective."""
    if kind == QueueKind.SINGLE:
        by_item: dict[int, list[float]] = {}
        for (item, _), value in table.items():
            by_item.setdefault(item, []).append(float(value))
        ids = [i for i in by_item if objective in items[i].responses[0].get("scores", {})]
        if len(ids) < 3:
            return None
        ratings = [float(np.mean(by_item[i])) for i in ids]
        scores = [float(items[i].responses[0]["scores"][objective]) for i in ids]
        if np.ptp(ratings) == 0 or np.ptp(scores) == 0:
            return None
        return float(spearmanr(ratings, scores).statistic)
    hits = []
    for (item, _), value in table.items():
        a, b = (r.get("scores", {}).get(objective) for r in items[item].responses)
        if value == "tie" or a is None or b is None or a == b:
            continue
        hits.append((value == "A") == (a > b))
    return float(np.mean(hits)) if hits else None


def summary(session: Session, queue: ReviewQueue) -> dict[str, Any]:
    found, kind = judgements(session, queue), QueueKind(queue.kind)
    targets = {}
    for target in [*queue.objectives, OVERALL]:
        table = found.values.get(target, {})
        targets[target] = {
            "judgements": len(table),
            "krippendorff_alpha": krippendorff_alpha(table, kind),
            "pairwise_agreement": pairwise_agreement(table),
            "reward_agreement": None if target == OVERALL else reward_agreement(table, found.items, target, kind),
        }
    return {
        "queue_id": queue.id,
        "kind": queue.kind,
        "items": item_count(session, queue),
        "reviewers": progress(session, queue),
        "targets": targets,
    }


def item_count(session: Session, queue: ReviewQueue) -> int:
    return int(session.scalar(select(func.count(ReviewItem.id)).where(ReviewItem.queue_id == queue.id)) or 0)


def progress(session: Session, queue: ReviewQueue) -> dict[str, dict[str, int]]:
    """Per reviewer: drafts and submitted reviews in this queue."""
    rows = session.execute(
        select(Review.reviewer, Review.status, func.count(Review.id))
        .join(ReviewItem, ReviewItem.id == Review.item_id)
        .where(ReviewItem.queue_id == queue.id)
        .group_by(Review.reviewer, Review.status)
    )
    found: dict[str, dict[str, int]] = {}
    for reviewer, status, count in rows:
        found.setdefault(reviewer, {ReviewStatus.DRAFT: 0, ReviewStatus.SUBMITTED: 0})[status] = int(count)
    return found


# -- export -----------------------------------------------------------------------------------------------------------


def _submitted(session: Session, queue: ReviewQueue) -> Sequence[Any]:
    return session.execute(
        select(ReviewItem, Review)
        .join(Review, Review.item_id == ReviewItem.id)
        .where(ReviewItem.queue_id == queue.id, Review.status == ReviewStatus.SUBMITTED)
        .order_by(ReviewItem.position, Review.reviewer)
    ).all()


def export_jsonl(session: Session, queue: ReviewQueue) -> str:
    """One line per submitted review. Comparisons in preference-data shape: prompt, chosen, rejected (by the overall
    judgement; ties have both as null and `tie: true`), per-objective ratings as chosen / rejected / tie, reviewer.
    Single responses: prompt, response, ratings (1–5), overall."""
    lines = []
    for item, review in _submitted(session, queue):
        row: dict[str, Any] = {"queue_id": queue.id, "item_id": item.id, "prompt": item.prompt}
        if queue.kind == QueueKind.COMPARISON:
            a, b = (r["text"] for r in item.responses)
            winner = review.overall
            chosen, rejected = (a, b) if winner == "A" else (b, a) if winner == "B" else (None, None)
            relative = {"A": "chosen" if winner == "A" else "rejected", "B": "chosen" if winner == "B" else "rejected"}
            if winner == "tie":
                relative = {"A": "a", "B": "b"}
            row.update(
                chosen=chosen,
                rejected=rejected,
                tie=winner == "tie",
                ratings={k: "tie" if v == "tie" else relative[v] for k, v in review.ratings.items()},
            )
        else:
            row.update(response=item.responses[0]["text"], ratings={k: int(v) for k, v in review.ratings.items()})
            row["overall"] = int(review.overall) if review.overall else None
        row.update(reviewer=review.reviewer, comment=review.comment)
        lines.append(json.dumps(row, ensure_ascii=False))
    return "".join(line + "\n" for line in lines)


#: What makes a spreadsheet read a cell as a formula (OWASP, "CSV Injection"): =HYPERLINK(…) in a reviewer's comment
#: would run in whoever opens the export.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would read as a formula, prefixed with a single quote, as OWASP advises; any
    other value as it is."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


class _SafeWriter:
    """csv.writer whose text cells are spreadsheet_safe."""

    def __init__(self, out: io.StringIO) -> None:
        self._writer = csv.writer(out)

    def writerow(self, row: Sequence[Any]) -> None:
        self._writer.writerow([spreadsheet_safe(cell) for cell in row])


def export_csv(session: Session, queue: ReviewQueue) -> str:
    """One row per submitted review; text cells that a spreadsheet would run as formulas are neutralised."""
    out = io.StringIO()
    writer = _SafeWriter(out)
    writer.writerow(
        [
            "queue_id",
            "item_id",
            "position",
            "reviewer",
            "prompt",
            "response_a",
            "response_b",
            *queue.objectives,
            "overall",
            "comment",
        ]
    )
    for item, review in _submitted(session, queue):
        texts = [r["text"] for r in item.responses] + [""]
        writer.writerow(
            [
                queue.id,
                item.id,
                item.position,
                review.reviewer,
                item.prompt,
                texts[0],
                texts[1],
                *(review.ratings.get(name, "") for name in queue.objectives),
                review.overall or "",
                review.comment,
            ]
        )
    return out.getvalue()
