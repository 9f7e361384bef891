"""What a run config may reach on this server, decided before a run is stored: files and models only under the
allowed roots (the data folder's uploads folder and the folders an operator lists), and never the server's own
files (database, broker, secret, run folders) wherever they lie, and code from configs (`python` objectives,
`trust_remote_code`) only where an operator enabled it, and then only for admins."""

from __future__ import annotations

from pathlib import Path

from app.auth import SECRET_FILE
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


#: The folder of the data folder meant for users' files (prompt sets, models): configs may name files there.
UPLOADS = "uploads"
_SIDECARS = ("", "-wal", "-shm", "-journal")  # SQLite's write-ahead log, shared memory and rollback journal


def allowed_roots(settings: Settings) -> list[Path]:
    """Where configs may name files: the data folder's uploads folder and the operator's MEAL_ALLOWED_ROOTS."""
    uploads = Path(settings.data_dir).resolve() / UPLOADS
    return [uploads, *(Path(root).resolve() for root in settings.allowed_roots)]


def _local_file(url: str) -> Path | None:
    """The file a SQLite database or broker URL names (sqlite:///x, sqla+sqlite:///x); None for a server."""
    url = url.removeprefix("sqla+")
    if not url.startswith("sqlite:"):
        return None
    database = url.split("?", 1)[0].removeprefix("sqlite:").removeprefix("///")
    return Path(database).resolve() if database and database != ":memory:" else None


def server_paths(settings: Settings) -> list[Path]:
    """The server's own files and folders: never named by a config, whichever root they lie under. The database
    and the broker with their SQLite sidecars, the secret key file, the .env file settings are read from, the run
    folders (every run's, and the cache of the artefact store), a local artefact store and the Hugging Face token
    files."""
    found = [Path(settings.runs_dir).resolve(), Path(settings.data_dir).resolve() / SECRET_FILE, Path(".env").resolve()]
    for url in (settings.database_url, settings.broker_url):
        database = _local_file(url)
        if database is not None:
            found += [database.with_name(database.name + sidecar) for sidecar in _SIDECARS]
    store = settings.artifacts_url
    if store and ("://" not in store or store.startswith("file://")):
        found.append(Path(store.removeprefix("file://")).resolve())
    return found + _hub_tokens()


def _hub_tokens() -> list[Path]:
    """The Hugging Face token files (HF_HOME/token, stored_tokens): the cache beside them may hold models a config
    names, the tokens are the operator's secrets."""
    from huggingface_hub import constants

    return [Path(constants.HF_TOKEN_PATH).resolve(), Path(constants.HF_STORED_TOKENS_PATH).resolve()]


def looks_like_path(value: str) -> bool:
    """A local path rather than a hub id ("org/name") or a built-in name."""
    return value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1 or Path(value).exists()


def path_refusal(value: str, settings: Settings) -> str | None:
    """Why a config may not name this path, or None. Allowed: under a root (allowed_roots) and none of the
    server's own paths; inside the data folder, only under a root that lies inside it (its uploads folder)."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    resolved = Path(value).expanduser().resolve()  # links followed: a link in uploads to the secret is the secret
    roots = allowed_roots(settings)
    shown = ", ".join(str(r) for r in roots)
    inside = [root for root in roots if resolved.is_relative_to(root)]
    if not inside:
        return f"{value[:200]!r} is outside the folders this server allows ({shown})"
    if any(resolved.is_relative_to(own) for own in server_paths(settings)):
        return f"{value[:200]!r} is one of the server's own files, which configs may not name"
    data = Path(settings.data_dir).resolve()
    if resolved.is_relative_to(data) and not any(root.is_relative_to(data) and root != data for root in inside):
        return f"{value[:200]!r} is in the data folder but not in {data / UPLOADS}, where configs may name files"
    return None


def check_path(field: str, value: str, settings: Settings) -> None:
    refusal = path_refusal(value, settings)
    if refusal is not None:
        raise ConfigNotAllowed(field, refusal)


def check_prompts(field: str, spec: str, settings: Settings) -> None:
    """A prompt set (data.train_prompts, an experiment's held_out.prompts): a built-in set, a hub id, or a path
    under the allowed roots."""
    if not spec.startswith("builtin:") and not is_hub_id(spec):
        check_path(field, spec, settings)


def check_config(config: RunConfig, settings: Settings, role: Role) -> None:
    """Raises ConfigNotAllowed for the first thing the config may not reach."""
    if config.model.name_or_path != DEFAULT_MODEL and looks_like_path(config.model.name_or_path):
        check_path("model.name_or_path", config.model.name_or_path, settings)
    check_prompts("data.train_prompts", config.data.train_prompts, settings)
    check_prompts("data.eval_prompts", config.data.eval_prompts, settings)
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
