"""Writes app/static/js/contracts.js, the browser's copy of the contracts named in meal_core: the status sets, run
phases, roles and review states (meal_core/enums.py), the metric keys (meal_core/metric_keys.py), the algorithm names
(meal_core.experiment.ALGORITHMS, from the config's `algorithm.name`), the run config fields an experiment
sets itself and the experiment report's figure names (meal_core/experiment.py).

    .venv/bin/python -m app.contracts          # rewrite the file after changing either module

tests/test_contracts.py fails while the committed file differs from what this writes, so the browser never retypes
a status or a key.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

from meal_core import enums, experiment, metric_keys

PATH = Path(__file__).parent / "static" / "js" / "contracts.js"

HEADER = """\
// The contracts between the server and these pages, written by `python -m app.contracts` from meal_core/enums.py,
// meal_core/metric_keys.py and meal_core/experiment.py. Do not edit: change those modules and rewrite this file.
"""

FOOTER = """
// A metric key of one objective: metricKey(METRIC.REWARD, "brevity") === "reward/brevity".
export const metricKey = (template, objective) => template.replace("{objective}", objective);

// What every key of a family starts with: metricPrefix(METRIC.REWARD) === "reward/".
export const metricPrefix = (template) => template.split("{")[0];
"""

STATUS_SETS = {
    "ACTIVE": enums.ACTIVE_RUN_STATUSES,
    "FINISHED": enums.FINISHED_RUN_STATUSES,
    "RESUMABLE": enums.RESUMABLE_RUN_STATUSES,
    "HELD": enums.HELD_RUN_STATUSES,
    "STOPPABLE": enums.STOPPABLE_RUN_STATUSES,
}
ENUMS: dict[str, type[StrEnum]] = {
    "RUN_STATUS": enums.RunStatus,
    "RUN_PHASE": enums.RunPhase,
    "JOB_STATUS": enums.JobStatus,
    "ROLE": enums.Role,
    "QUEUE_KIND": enums.QueueKind,
    "QUEUE_STATUS": enums.QueueStatus,
    "REVIEW_STATUS": enums.ReviewStatus,
}

# The experiment report's figures a page names (each run's row: meal_core.experiment.run_figures).
FIGURES = [
    experiment.HV_FINAL,
    experiment.HV_GAIN,
    experiment.CONTROL_FINAL,
    experiment.HELD_OUT_HV,
    experiment.HELD_OUT_CONTROL,
    experiment.HELD_OUT_DEGENERATE,
    experiment.WALL_MINUTES,
]


def _frozen(value: object) -> str:
    return f"Object.freeze({json.dumps(value)});"


def render() -> str:
    lines = [HEADER]
    for name, enum in ENUMS.items():
        lines.append(f"export const {name} = {_frozen({member.name: member.value for member in enum})}")
    ordered = list(enums.RunStatus)
    sets = {name: sorted(members, key=ordered.index) for name, members in STATUS_SETS.items()}
    lines.append(f"export const RUN_STATUSES = {_frozen(sets)}")
    lines.append(f"export const ROLES = {_frozen([role.value for role in enums.ROLE_ORDER])}")
    lines.append(f"export const PENDING_JOB_STATUSES = {_frozen(sorted(enums.PENDING_JOB_STATUSES))}")
    lines.append(f"export const METRIC = {_frozen(metric_keys.exported())}")
    lines.append(f"export const ALGORITHMS = {_frozen(list(experiment.ALGORITHMS))}")
    # Run config field → the experiment field that sets it (a list of seeds, of algorithms), never `vary`.
    lines.append(f"export const EXPERIMENT_SET_BY = {_frozen(experiment.RESERVED_FIELDS)}")
    lines.append(f"export const FIGURE = {_frozen({name.upper(): name for name in FIGURES})}")
    return "\n".join(lines) + "\n" + FOOTER


def main() -> None:
    PATH.write_text(render())
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
