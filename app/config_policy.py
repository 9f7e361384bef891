"""What a run config may reach on this server, decided before a run is stored: files and models only under the
allowed roots (the data folder and the folders an operator lists), and code from configs (`python` objectives,
`trust_remote_code`) only where an operator enabled it, and then only for admins."""

from __future__ import annotations

from pathlib import Path

from app.store.settings import Settings
from meal_core.config import DEFAULT_MODEL, RunConfig
from meal_core.data import is_hub_id
from meal_core.enums import Role


class ConfigNotAllowed(ValueError):
    """The config reaches something this server does not allow: (field, message), and whether it is a matter of
    the user's role (403) rather than of the value (422)."""

    def __init__(self, field: str, message: str, forbidden: bool = False) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.forbidden = field, message, forbidden


def allowed_roots(settings: Settings) -> list[Path]:
    return [Path(settings.data_dir).resolve(), *(Path(root).resolve() for root in settings.allowed_roots)]


def looks_like_path(value: str) -> bool:
    """A local path rather than a hub id ("org/name") or a built-in name."""
    return value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1 or Path(value).exists()


def check_path(field: str, value: str, settings: Settings) -> None:
    resolved = Path(value).expanduser().resolve()
    roots = allowed_roots(settings)
    if not any(resolved.is_relative_to(root) for root in roots):
        shown = ", ".join(str(r) for r in roots)
        raise ConfigNotAllowed(field, f"{value[:200]!r} is outside the folders this server allows ({shown})")


def check_config(config: RunConfig, settings: Settings, role: Role) -> None:
    """Raises ConfigNotAllowed for the first thing the config may not reach."""
    if config.model.name_or_path != DEFAULT_MODEL and looks_like_path(config.model.name_or_path):
        check_path("model.name_or_path", config.model.name_or_path, settings)
    for field, spec in (
        ("data.train_prompts", config.data.train_prompts),
        ("data.eval_prompts", config.data.eval_prompts),
    ):
        if not spec.startswith("builtin:") and not is_hub_id(spec):
            check_path(field, spec, settings)
    remote_code = [("model.trust_remote_code", config.model.trust_remote_code)]
    for index, objective in enumerate(config.objectives):
        where = f"objectives.{index}"
        if objective.type == "python":
            check_code(f"{where}.function", settings.allow_python_objectives, "MEAL_ALLOW_PYTHON_OBJECTIVES", role)
        if objective.type == "hf_classifier":
            remote_code.append((f"{where}.trust_remote_code", objective.trust_remote_code))
            if looks_like_path(objective.model):
                check_path(f"{where}.model", objective.model, settings)
        if objective.type == "relevance" and objective.model_path:
            check_path(f"{where}.model_path", objective.model_path, settings)
    for field, asked in remote_code:
        if asked:
            check_code(field, settings.allow_remote_code, "MEAL_ALLOW_REMOTE_CODE", role)


def check_code(field: str, enabled: bool, setting: str, role: Role) -> None:
    if not enabled:
        raise ConfigNotAllowed(field, f"code from configs is off on this server (an operator turns it on: {setting})")
    if not role.allows(Role.ADMIN):
        raise ConfigNotAllowed(field, "only admins may launch runs that run code from their config", forbidden=True)
