"""The deployment files name only what exists: every command of the compose files parses with the installed `meal`,
every path the Dockerfile copies is in the repository, the folders the app reads beside its packages are there, and
`docker-compose config` accepts both compose files (Debian's docker-compose, installed by scripts/test.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from app import main as app_main
from app.routers import pages
from app.store import migrate
from meal_core.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "docker-compose.gpu.yml"]


def services() -> dict[str, dict[str, Any]]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"])


def meal_commands() -> list[tuple[str, list[str]]]:
    return [(name, spec["command"]) for name, spec in services().items() if spec.get("command", [""])[0] == "meal"]


def test_compose_runs_the_web_server_migrations_and_both_kinds_of_worker() -> None:
    commands = {tuple(command[:2]) for _, command in meal_commands()}
    assert commands == {("meal", "migrate"), ("meal", "web"), ("meal", "worker")}
    assert any("playground" in command for _, command in meal_commands())


@pytest.mark.parametrize(("service", "command"), meal_commands(), ids=[name for name, _ in meal_commands()])
def test_every_compose_command_parses_with_the_installed_cli(service: str, command: list[str]) -> None:
    parser, handlers = build_parser()
    args = parser.parse_args(command[1:])  # argparse exits (a failure here) on an unknown command or option
    assert args.command in handlers


def test_every_meal_setting_compose_sets_exists() -> None:
    from app.store.settings import Settings

    environment = services()["web"]["environment"]
    names = {name.removeprefix("MEAL_").lower() for name in environment if name.startswith("MEAL_")}
    assert names <= set(Settings.model_fields), names - set(Settings.model_fields)


def test_the_dockerfile_copies_only_what_exists_and_runs_an_installed_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM \S+ AS (\S+)", dockerfile, flags=re.M))
    for line in re.findall(r"^COPY (.+)$", dockerfile, flags=re.M):
        parts = line.split()
        if parts[0].startswith("--from="):
            assert parts[0].removeprefix("--from=") in stages, line
            continue
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    assert "USER meal" in dockerfile  # not root
    cmd = yaml.safe_load(re.search(r"^CMD (.+)$", dockerfile, flags=re.M).group(1))  # type: ignore[union-attr]
    parser, _ = build_parser()
    parser.parse_args(cmd[1:])


def test_the_image_holds_the_folders_the_app_finds_beside_its_packages() -> None:
    """The app reads templates, migrations and npm assets relative to its package folders: the runtime stage (the
    Dockerfile's last) must copy each to the same place under /srv/meal."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = dockerfile[dockerfile.rindex("\nFROM ") :]
    copied = {line.split()[-1].rstrip("/") for line in re.findall(r"^COPY (.+)$", runtime, flags=re.M)}
    searchpath = pages.TEMPLATES.env.loader.searchpath[0]  # type: ignore[attr-defined]
    for folder in (app_main.UPLOT_DIST, app_main.SWAGGER_DIST, migrate.MIGRATIONS, Path(searchpath)):
        assert folder.is_dir(), folder
        top = folder.resolve().relative_to(ROOT).parts[0]
        assert f"/srv/meal/{top}" in copied, f"the Dockerfile's runtime stage does not copy /srv/meal/{top}"


@pytest.mark.parametrize("profiles", [[], ["--profile", "minio"]], ids=["default", "minio"])
def test_docker_compose_config_accepts_the_files(profiles: list[str], tmp_path: Path) -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed (scripts/test.sh installs Debian's)", pytrace=False)
    env_file = tmp_path / ".env"
    env_file.write_text("MEAL_SECRET_KEY=a-test-value-not-used-anywhere\n")
    files = [arg for path in COMPOSE_FILES for arg in ("-f", str(path))]
    result = subprocess.run(
        [binary, "--env-file", str(env_file), *profiles, *files, "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_the_base_images_default_to_the_official_ones_users_pull() -> None:
    """scripts/compose_check.sh swaps in stand-ins built from Debian packages (tests/compose/) through these variables;
    left unset, a user gets the official images."""
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "image: ${MEAL_POSTGRES_IMAGE:-postgres:16}" in compose
    assert "image: ${MEAL_REDIS_IMAGE:-redis:7}" in compose
    assert "PYTHON_IMAGE: ${PYTHON_IMAGE:-python:3.11-slim}" in compose
    assert "NODE_IMAGE: ${NODE_IMAGE:-node:20-slim}" in compose
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim\n" in dockerfile and "ARG NODE_IMAGE=node:20-slim\n" in dockerfile
    assert 'pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"' in dockerfile
