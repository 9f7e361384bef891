"""The artefact store: where run folders and checkpoints live so that every machine finds them.

`MEAL_ARTIFACTS_URL` names it: a folder (local, or a mount every machine shares), or `s3://bucket/prefix` on any
S3-compatible server, through fsspec/s3fs, with the endpoint and keys from the standard `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. Each machine keeps what it used in a cache, `MEAL_RUNS_DIR`, whose
run folders are what meal_core reads and writes. Unset (the embedded default), there is no store apart from that
folder: the run folders in `MEAL_RUNS_DIR` are the store, and nothing is copied.

Layout under the store's root, the same as a run folder's:

    run-<id>/config.json
    run-<id>/checkpoints/iter-000012/adapter/…      the peft adapter
    run-<id>/checkpoints/iter-000012/state.pt        the rest of the run's state
    run-<id>/checkpoints/iter-000012.complete        written last: the checkpoint's files and sizes

A checkpoint is visible only once its `.complete` marker exists, and the marker is written after every file of the
checkpoint: a worker that dies while uploading leaves files nobody reads. A fetched checkpoint is checked against
the marker's sizes and renamed into the cache only once whole, as meal_core saves one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from app.store.settings import Settings
from meal_core import checkpoint as checkpoints
from meal_core.inference import BASE, CheckpointError

log = logging.getLogger(__name__)

MARKER = ".complete"
CONFIG_FILE = "config.json"
EXPORTS = "exports"  # a run's model exports, one zip each: run-<id>/exports/<name>.zip
RETRY_S = 60.0  # how long a store operation is retried before it fails (an S3 endpoint restarting, a network blip)
T = TypeVar("T")


class ArtifactError(RuntimeError):
    """The store could not be read or written within RETRY_S, or holds a checkpoint that is not whole."""


class ArtifactStore(Protocol):
    """What the worker and the web server need of the store; `run_dir` is the machine's local copy of a run."""

    def run_dir(self, run_id: int) -> Path: ...

    def checkpoint_names(self, run_id: int) -> list[str]: ...

    def publish(self, run_id: int, checkpoint: Path, keep_last: int) -> None: ...

    def fetch(self, run_id: int, names: Iterable[str]) -> Path: ...

    def fetch_latest(self, run_id: int) -> str | None: ...

    def adopt(self, run_id: int, keep_last: int) -> None: ...

    def publish_file(self, run_id: int, relative: str) -> None: ...

    def fetch_file(self, run_id: int, relative: str) -> Path: ...

    def delete_run(self, run_id: int) -> None: ...

    def cached_runs(self) -> list[int]: ...

    def forget(self, run_id: int) -> None: ...


class LocalStore:
    """The embedded default: the cache folder is the store, so publishing and fetching have nothing to do."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir

    def run_dir(self, run_id: int) -> Path:
        return self.runs_dir / f"run-{run_id}"

    def checkpoint_names(self, run_id: int) -> list[str]:
        return [path.name for path in checkpoints.list_checkpoints(self.run_dir(run_id))]

    def publish(self, run_id: int, checkpoint: Path, keep_last: int) -> None:
        """meal_core saved the checkpoint in place, complete (a rename), and pruned the old ones."""

    def fetch(self, run_id: int, names: Iterable[str]) -> Path:
        return self.run_dir(run_id)

    def fetch_latest(self, run_id: int) -> str | None:
        names = self.checkpoint_names(run_id)
        return names[-1] if names else None

    def adopt(self, run_id: int, keep_last: int) -> None:
        """Nothing to adopt: the cache is the store."""

    def publish_file(self, run_id: int, relative: str) -> None:
        """The file was written in the run folder, which is the store."""

    def fetch_file(self, run_id: int, relative: str) -> Path:
        path = self.run_dir(run_id) / relative
        if not path.is_file():
            raise FileNotFoundError(f"run {run_id} has no {relative}")
        return path

    def delete_run(self, run_id: int) -> None:
        """The run's folder and everything in it: config, checkpoints, exports."""
        try:
            shutil.rmtree(self.run_dir(run_id))
        except FileNotFoundError:
            pass  # nothing was ever saved, or an earlier delete got this far
        except OSError as exc:
            raise ArtifactError(f"the artefact store failed to delete run {run_id}'s folder: {exc}") from exc

    def cached_runs(self) -> list[int]:
        """None: nothing here is a copy (the folders are the store, and a deleted run's folder went with it)."""
        return []

    def forget(self, run_id: int) -> None:
        """Nothing cached to forget."""


class RemoteStore:
    """A store that fsspec reaches (S3, or a folder other than the cache): checkpoints are uploaded file by file,
    then their marker; fetched into the cache on first use and kept there while the store has them."""

    def __init__(self, fs: Any, root: str, runs_dir: Path, retry_s: float = RETRY_S) -> None:
        self.fs, self.root, self.runs_dir, self.retry_s = fs, root.rstrip("/"), runs_dir, retry_s

    # -- addresses --------------------------------------------------------------------------------------------------

    def run_dir(self, run_id: int) -> Path:
        return self.runs_dir / f"run-{run_id}"

    def _remote(self, run_id: int, *parts: str) -> str:
        return "/".join([self.root, f"run-{run_id}", *parts])

    def _checkpoints(self, run_id: int) -> str:
        return self._remote(run_id, checkpoints.checkpoint_dir(Path()).name)

    # -- reading ----------------------------------------------------------------------------------------------------

    def checkpoint_names(self, run_id: int) -> list[str]:
        """The run's complete checkpoints in the store, oldest first."""
        folder = self._checkpoints(run_id)

        def listing() -> list[str]:
            self.fs.invalidate_cache(folder)  # another machine may have written since this process last looked
            try:
                entries = self.fs.ls(folder, detail=False)
            except FileNotFoundError:
                return []
            return [entry.rsplit("/", 1)[-1] for entry in entries]

        names = self._retrying(f"list the checkpoints of run {run_id}", listing)
        return sorted(
            name.removesuffix(MARKER) for name in names if name.endswith(MARKER) and name.startswith(checkpoints.PREFIX)
        )

    def fetch_latest(self, run_id: int) -> str | None:
        """Bring the store's newest checkpoint into the cache (where Trainer.resume and LoadedRun look); None if the
        store has none. Cached checkpoints older than it that the store no longer keeps leave the cache, so that it
        stays bounded; newer ones stay (a trainer on this machine may be uploading one; see also `adopt`)."""
        names = self.checkpoint_names(run_id)
        if not names:
            return None
        self.fetch(run_id, [names[-1]])
        for cached in checkpoints.list_checkpoints(self.run_dir(run_id)):
            if cached.name < names[-1] and cached.name not in names:
                shutil.rmtree(cached, ignore_errors=True)
        return names[-1]

    def adopt(self, run_id: int, keep_last: int) -> None:
        """Publish this machine's newest checkpoint of the run if the store has none as new: one saved before the
        store was configured, or one whose upload was cut off. Called before a run resumes on this machine."""
        cached = checkpoints.list_checkpoints(self.run_dir(run_id))
        names = self.checkpoint_names(run_id)
        if cached and (not names or cached[-1].name > names[-1]):
            log.info("run %s: publishing checkpoint %s that the store did not have", run_id, cached[-1].name)
            self.publish(run_id, cached[-1], keep_last)

    def fetch(self, run_id: int, names: Iterable[str]) -> Path:
        """Make the named checkpoints whole in the cache; returns the local run folder."""
        local_run = self.run_dir(run_id)
        for name in names:
            if name == BASE:  # the untrained policy: nothing to fetch
                continue
            target = checkpoints.checkpoint_dir(local_run) / name
            if (target / "state.pt").is_file():
                continue  # complete: a checkpoint never changes once published
            self._download(run_id, name, target)
        return local_run

    def _download(self, run_id: int, name: str, target: Path) -> None:
        remote = f"{self._checkpoints(run_id)}/{name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        # A staging folder of this download's own: other processes sharing the cache may fetch the same checkpoint.
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.fetch-"))
        try:
            sizes: dict[str, int] = json.loads(
                self._retrying(f"read {name}'s marker", self.fs.cat_file, remote + MARKER)
            )
            for relative, size in sizes.items():
                local = staging / relative
                local.parent.mkdir(parents=True, exist_ok=True)
                self._retrying(f"download {name}/{relative}", self.fs.get_file, f"{remote}/{relative}", str(local))
                if local.stat().st_size != size:
                    raise ArtifactError(f"{name}/{relative}: {local.stat().st_size} bytes, its marker says {size}")
            if not (target / "state.pt").is_file():  # another process may have completed it meanwhile
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
        except FileNotFoundError:  # not in the store, or pruned by its run's worker while we fetched it
            have = self.checkpoint_names(run_id) or "none"
            raise CheckpointError(f"checkpoint {name!r}: the store has {have}") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("run %s: fetched checkpoint %s (%d files)", run_id, name, len(sizes))

    # -- writing ----------------------------------------------------------------------------------------------------

    def publish(self, run_id: int, checkpoint: Path, keep_last: int) -> None:
        """Upload a checkpoint meal_core just saved (and the run's config), then its marker; then drop the store's
        checkpoints beyond the newest `keep_last`, marker first, so none is ever visible while half deleted."""
        files = {str(path.relative_to(checkpoint)): path for path in sorted(checkpoint.rglob("*")) if path.is_file()}
        remote = f"{self._checkpoints(run_id)}/{checkpoint.name}"
        # Published before (a resumed run saving the iteration it resumed at): invisible while it is rewritten.
        self._retrying(f"withdraw {checkpoint.name}", self._remove_marker, remote + MARKER)
        config = checkpoint.parent.parent / CONFIG_FILE
        if config.is_file():
            self._retrying("upload the run's config", self.fs.put_file, str(config), self._remote(run_id, CONFIG_FILE))
        for relative, path in files.items():
            self._retrying(f"upload {checkpoint.name}/{relative}", self.fs.put_file, str(path), f"{remote}/{relative}")
        marker = json.dumps({relative: path.stat().st_size for relative, path in files.items()}).encode()
        self._retrying(f"mark {checkpoint.name} complete", self._write_marker, remote + MARKER, marker)
        for old in self.checkpoint_names(run_id)[:-keep_last]:
            self._retrying(f"drop {old}", self._drop, run_id, old)

    def publish_file(self, run_id: int, relative: str) -> None:
        """Upload a file written in the run's local folder (an export's zip) to the same place in the store. Such
        files never change once published: a name is used once."""
        local = self.run_dir(run_id) / relative
        self._retrying(f"upload {relative}", self.fs.put_file, str(local), self._remote(run_id, *relative.split("/")))

    def fetch_file(self, run_id: int, relative: str) -> Path:
        """A published file, downloaded into the cache on first use (beside it, then renamed: never half there)."""
        local = self.run_dir(run_id) / relative
        if local.is_file():
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = local.with_name(f".{local.name}.fetch-{os.getpid()}")
        try:
            self._retrying(
                f"download {relative}", self.fs.get_file, self._remote(run_id, *relative.split("/")), str(staging)
            )
            staging.rename(local)
        finally:
            staging.unlink(missing_ok=True)
        return local

    def delete_run(self, run_id: int) -> None:
        """Every object of the run in the store (config, checkpoints, exports), then this machine's cached copy.
        The checkpoints' markers go first, so that no checkpoint is ever visible half deleted; the listing before
        them fails (ArtifactError) on a store that cannot be reached, before anything is deleted. Safe to repeat:
        a delete cut off part way is finished by the next one. Other machines' caches keep their copies until their
        workers next start a task (run_delete.forget_deleted_runs); the id is never given to another run
        (AUTOINCREMENT), so no run reads them meanwhile."""
        for name in self.checkpoint_names(run_id):
            self._retrying(f"withdraw {name}", self._remove_marker, f"{self._checkpoints(run_id)}/{name}{MARKER}")
        self._retrying(f"delete run {run_id}", self._remove_tree, self._remote(run_id))
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def cached_runs(self) -> list[int]:
        """The runs this machine holds a cached copy of (run-<id> folders in the cache)."""
        if not self.runs_dir.is_dir():
            return []
        ids = (path.name.removeprefix("run-") for path in self.runs_dir.iterdir() if path.is_dir())
        return sorted(int(suffix) for suffix in ids if suffix.isdigit())

    def forget(self, run_id: int) -> None:
        """This machine's cached copy of the run (not the store's): for a run deleted on another machine."""
        shutil.rmtree(self.run_dir(run_id), ignore_errors=True)

    def _remove_tree(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(path, recursive=True)
        self.fs.invalidate_cache(path)

    def _write_marker(self, path: str, content: bytes) -> None:
        """Whole or not at all: written beside it, then moved (an S3 object is whole anyway; a file is not)."""
        partial = f"{path}.{os.getpid()}.partial"
        self.fs.pipe_file(partial, content)
        self.fs.mv(partial, path)

    def _remove_marker(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def _drop(self, run_id: int, name: str) -> None:
        remote = f"{self._checkpoints(run_id)}/{name}"
        self._remove_marker(remote + MARKER)
        with contextlib.suppress(FileNotFoundError):  # a marker whose files were already gone
            self.fs.rm(remote, recursive=True)

    # -- faults -----------------------------------------------------------------------------------------------------

    def _retrying(self, what: str, action: Callable[..., T], *args: Any) -> T:
        """action(*args), retried with back-off for retry_s when it fails for a reason other than a missing file."""
        deadline, pause = time.monotonic() + self.retry_s, 0.5
        while True:
            try:
                return action(*args)
            except FileNotFoundError:
                raise
            except Exception as exc:
                if time.monotonic() + pause > deadline:
                    raise ArtifactError(f"the artefact store failed to {what}: {type(exc).__name__}: {exc}") from exc
                log.warning("artefact store: could not %s (%s); retrying in %.1f s", what, exc, pause)
                time.sleep(pause)
                pause = min(pause * 2, 10.0)


def storage_options(url: str, quick: bool = False) -> dict[str, Any]:
    """fsspec's options for the URL. For S3: the endpoint of `AWS_ENDPOINT_URL` (boto reads the keys itself), and no
    listing cache, since other machines write the same prefix."""
    if "://" not in url or url.startswith("file://"):
        return {"auto_mkdir": True}  # a shared folder: make a run's folders as its files are written
    if not url.startswith("s3://"):
        return {}
    options: dict[str, Any] = {"use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    if quick:  # a web request: fail within seconds rather than through botocore's own retries
        options["config_kwargs"] = {"connect_timeout": 2, "read_timeout": 10, "retries": {"max_attempts": 1}}
    return options


def open_store(settings: Settings, retry_s: float = RETRY_S) -> ArtifactStore:
    """The store the settings name: LocalStore for the default (no URL, or the cache folder itself). A web request
    gives a shorter `retry_s` than a worker: it answers 503 rather than wait."""
    url = settings.artifacts_url
    folder = url.removeprefix("file://")
    if not url or ("://" not in folder and Path(folder).resolve() == settings.runs_dir.resolve()):
        return LocalStore(settings.runs_dir)
    import fsspec  # only where a store is configured

    quick = retry_s < RETRY_S
    fs, root = fsspec.core.url_to_fs(url, **storage_options(url, quick))
    if quick and hasattr(fs, "retries"):
        fs.retries = 1  # s3fs retries some errors itself, 5 times by default
    return RemoteStore(fs, root, settings.runs_dir, retry_s)
