"""The floors of the house and which way their imports point.

meal_core (the engine) imports nothing of ours; app/store (the data layer) imports only itself and meal_core;
worker/ imports only app/store, meal_core and itself, never the web routes, pages or auth. Checked two ways: by
reading every module's import statements, and by importing the worker's entry points in a fresh interpreter and
listing what came along.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OURS = ("app", "worker", "meal_core")

ALLOWED = {
    "meal_core": ("meal_core",),
    "app/store": ("app.store", "meal_core"),
    "worker": ("worker", "app.store", "meal_core"),
}


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in the file names (absolute imports; ours are all absolute)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from app import store` names the module app.store
            names.update(f"{node.module}.{alias.name}" for alias in node.names if node.module in OURS)
    return names


def is_within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_each_floor_imports_only_the_floors_below_it() -> None:
    wrong = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for module in imported_modules(path):
                if module.split(".")[0] not in OURS or module in OURS:
                    continue  # a third-party or standard module, or the bare package in `from app import store`
                if not is_within(module, allowed):
                    wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []


def test_the_import_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check above can fail: a worker module that imports the web app is caught."""
    bad = tmp_path / "tasks.py"
    bad.write_text("from app.deps import MAX_ID\nfrom app import routers\nimport app.main\n")
    found = {m for m in imported_modules(bad) if not is_within(m, ALLOWED["worker"])}
    assert found >= {"app.deps", "app.routers", "app.main"}


def test_a_worker_process_loads_no_web_module() -> None:
    """Importing the worker's entry points in a fresh interpreter brings in nothing of app/ outside app/store."""
    code = (
        "import json, sys, worker.tasks, worker.cli, worker.recorder\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('app', 'worker', 'meal_core'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert "worker.tasks" in loaded and "app.store.models" in loaded
    assert [m for m in loaded if m.startswith("app") and not is_within(m, ("app.store",)) and m != "app"] == []
