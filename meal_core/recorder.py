"""Where a run reports to. The engine knows only this protocol; the CLI writes JSONL, the worker a database."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from meal_core.enums import RunPhase
from meal_core.evaluation import EvaluationResult

REPRODUCIBILITY_FILE = "reproducibility.json"


@dataclass
class SampleRecord:
    step: int
    prompt_id: str
    prompt: str
    weights: list[float]
    response: str
    raw_rewards: dict[str, float]
    normalized_rewards: dict[str, float]
    accepted: bool


class Recorder(Protocol):
    def metrics(self, step: int, values: dict[str, float]) -> None: ...
    def samples(self, step: int, samples: list[SampleRecord]) -> None: ...
    def evaluation(self, result: EvaluationResult) -> None: ...
    def status(self, status: str, message: str | None = None) -> None: ...
    def progress(self, done: int, total: int, eta_seconds: float | None) -> None:
        """The whole run: iterations done of the total, and when the last should be done."""
        ...

    def phase(self, phase: RunPhase, done: int, total: int, eta_seconds: float | None) -> None:
        """What the run does now (meal_core.enums.RunPhase): units done of the phase's total (0: not counted) and
        an ETA from the rate measured inside it (None until a unit is done). Called often (after every generate
        batch): it must be cheap. `PhaseProgress` keeps the count and the clock."""
        ...

    def reproducibility(self, record: dict[str, Any]) -> None:
        """The run's reproducibility record (meal_core.provenance), once it has calibrated."""
        ...

    def should_stop(self) -> bool: ...
    def before_checkpoint(self) -> None:
        """Write what is buffered, if it can: a checkpoint should not run ahead of the run's records (a run resumed
        from it would never record the steps in between). Best effort: it must not raise."""
        ...


class NullRecorder:
    """Records nothing; a base for recorders that care about only some events."""

    def metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def samples(self, step: int, samples: list[SampleRecord]) -> None:
        pass

    def evaluation(self, result: EvaluationResult) -> None:
        pass

    def status(self, status: str, message: str | None = None) -> None:
        pass

    def progress(self, done: int, total: int, eta_seconds: float | None) -> None:
        pass

    def phase(self, phase: RunPhase, done: int, total: int, eta_seconds: float | None) -> None:
        pass

    def reproducibility(self, record: dict[str, Any]) -> None:
        pass

    def should_stop(self) -> bool:
        return False

    def before_checkpoint(self) -> None:
        return None


class JsonlRecorder(NullRecorder):
    """metrics.jsonl (one point per line: step, key, value, time), samples.jsonl, evaluations.jsonl."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self._files = {name: (run_dir / f"{name}.jsonl").open("a") for name in ("metrics", "samples", "evaluations")}

    def _write(self, name: str, rows: list[dict[str, Any]]) -> None:
        handle = self._files[name]
        handle.writelines(json.dumps(row) + "\n" for row in rows)
        handle.flush()

    def metrics(self, step: int, values: dict[str, float]) -> None:
        now = time.time()
        self._write("metrics", [{"step": step, "key": k, "value": v, "time": now} for k, v in values.items()])

    def samples(self, step: int, samples: list[SampleRecord]) -> None:
        self._write("samples", [asdict(s) for s in samples])

    def evaluation(self, result: EvaluationResult) -> None:
        self._write("evaluations", [result.to_json()])

    def reproducibility(self, record: dict[str, Any]) -> None:
        (self.run_dir / REPRODUCIBILITY_FILE).write_text(json.dumps(record, indent=2))

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows a JsonlRecorder wrote (an empty list if it wrote none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clock(seconds: float | None) -> str:
    return "--:--" if seconds is None else f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


class ConsoleProgress(NullRecorder):
    """A one-line progress bar with ETA on stderr, a line per phase before the loop (loading, calibrating, the
    step-0 evaluation, which can take longer than the training), plus status changes."""

    def __init__(self, stream: IO[str] | None = None, width: int = 30) -> None:
        self._stream, self.width = stream, width

    @property
    def stream(self) -> IO[str]:
        return self._stream or sys.stderr

    def progress(self, done: int, total: int, eta_seconds: float | None) -> None:
        filled = int(self.width * done / max(total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} iterations  ETA {_clock(eta_seconds)}")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()

    def phase(self, phase: RunPhase, done: int, total: int, eta_seconds: float | None) -> None:
        """Phases other than training (its bar is `progress`), rewritten in place as they advance."""
        if phase == RunPhase.TRAINING:
            return
        count = f" {done}/{total}  ETA {_clock(eta_seconds)}" if total else ""
        self.stream.write(f"\r{phase.replace('_', ' ')}{count}\x1b[K" + ("\n" if total and done >= total else ""))
        self.stream.flush()

    def status(self, status: str, message: str | None = None) -> None:
        self.stream.write(f"\n{status}" + (f": {message}" if message else "") + "\n")
        self.stream.flush()


class MultiRecorder:
    """Fans every event out to several recorders; stop if any of them asks."""

    def __init__(self, *recorders: Recorder) -> None:
        self.recorders = recorders

    def metrics(self, step: int, values: dict[str, float]) -> None:
        for r in self.recorders:
            r.metrics(step, values)

    def samples(self, step: int, samples: list[SampleRecord]) -> None:
        for r in self.recorders:
            r.samples(step, samples)

    def evaluation(self, result: EvaluationResult) -> None:
        for r in self.recorders:
            r.evaluation(result)

    def status(self, status: str, message: str | None = None) -> None:
        for r in self.recorders:
            r.status(status, message)

    def progress(self, done: int, total: int, eta_seconds: float | None) -> None:
        for r in self.recorders:
            r.progress(done, total, eta_seconds)

    def phase(self, phase: RunPhase, done: int, total: int, eta_seconds: float | None) -> None:
        for r in self.recorders:
            r.phase(phase, done, total, eta_seconds)

    def reproducibility(self, record: dict[str, Any]) -> None:
        for r in self.recorders:
            r.reproducibility(record)

    def should_stop(self) -> bool:
        return any(r.should_stop() for r in self.recorders)

    def before_checkpoint(self) -> None:
        for r in self.recorders:
            r.before_checkpoint()


class PhaseProgress:
    """One phase's count and clock, told to a recorder as it advances: units done of `total` and an ETA from the
    rate measured since the phase started in this process (none until a unit is done here, so a resumed run's
    earlier iterations do not make the rest look instant)."""

    def __init__(self, recorder: Recorder, phase: RunPhase, total: int = 0, done: int = 0) -> None:
        self.recorder, self.phase, self.total, self.done = recorder, phase, total, done
        self._first, self._started = done, time.monotonic()
        self.report()

    def advance(self, units: int = 1) -> None:
        self.done += units
        self.report()

    def eta_seconds(self) -> float | None:
        measured = self.done - self._first
        if measured <= 0 or not self.total:
            return None
        return (time.monotonic() - self._started) / measured * max(self.total - self.done, 0)

    def report(self) -> None:
        """Tell the recorder where the phase stands (again: after another phase interrupted it)."""
        self.recorder.phase(self.phase, self.done, self.total, self.eta_seconds())
