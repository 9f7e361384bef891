"""The artefact store (app/artifacts.py) against a real S3 protocol server (moto_server) and a shared folder: a
checkpoint is visible only once whole, another machine's cache fetches it byte for byte, old ones are pruned on both
sides, a failing store is reported rather than waited on forever, and a run resumed on another machine from the
store continues exactly as if it had never stopped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import S3Server, bearer, deterministic_metrics, free_port, tiny_run_config
from live_server import live_server

from app.store.artifacts import MARKER, ArtifactError, LocalStore, RemoteStore, open_store
from app.store.db import session_scope
from app.store.models import Run
from app.store.settings import Settings
from meal_core.inference import CheckpointError
from meal_core.recorder import JsonlRecorder, read_jsonl
from meal_core.trainer import Trainer


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["s3", "folder"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh store: a bucket on the S3 server (the process gets the AWS variables), or a folder that is not the
    cache (a mount every machine shares)."""
    if request.param == "folder":
        return str(tmp_path / "shared")
    server: S3Server = request.getfixturevalue("s3_server")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return server.bucket()


def machine(url: str, cache: Path) -> RemoteStore:
    """The store as one machine sees it: its own cache folder."""
    store = open_store(Settings(data_dir=cache, artifacts_url=url), retry_s=2)
    assert isinstance(store, RemoteStore)
    return store


def fake_checkpoint(run_dir: Path, iteration: int, payload: bytes = b"weights") -> Path:
    """A checkpoint folder as meal_core.checkpoint saves one: adapter files and state.pt."""
    folder = run_dir / "checkpoints" / f"iter-{iteration:06d}"
    (folder / "adapter" / "brevity").mkdir(parents=True)
    (folder / "adapter" / "brevity" / "adapter_model.safetensors").write_bytes(payload * 1000)
    (folder / "adapter" / "mixing.json").write_text('{"rule": "sum"}')
    (folder / "state.pt").write_bytes(payload + bytes(range(256)) * 40)
    (run_dir / "config.json").write_text('{"iterations": 4}')
    return folder


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_default_is_the_local_folder_itself(tmp_path: Path) -> None:
    assert isinstance(open_store(Settings(data_dir=tmp_path)), LocalStore)
    same = Settings(data_dir=tmp_path, artifacts_url=str(tmp_path / "runs"))
    assert isinstance(open_store(same), LocalStore)


def test_a_checkpoint_is_visible_only_once_complete(store_url: str, tmp_path: Path) -> None:
    writer = machine(store_url, tmp_path / "a")
    saved = fake_checkpoint(writer.run_dir(7), 2)
    # A worker that died while uploading: every file there, but no marker.
    for relative, content in files_of(saved).items():
        writer.fs.pipe_file(f"{writer.root}/run-7/checkpoints/iter-000002/{relative}", content)
    reader = machine(store_url, tmp_path / "b")
    assert reader.checkpoint_names(7) == []
    assert reader.fetch_latest(7) is None

    writer.publish(7, saved, keep_last=3)
    assert reader.checkpoint_names(7) == ["iter-000002"]
    assert reader.fetch_latest(7) == "iter-000002"
    fetched = reader.run_dir(7) / "checkpoints" / "iter-000002"
    assert files_of(fetched) == files_of(saved)
    assert writer.fs.cat_file(f"{writer.root}/run-7/config.json") == b'{"iterations": 4}'
    assert not list(fetched.parent.glob(".*"))  # no staging folder left behind


def test_old_checkpoints_are_pruned_in_the_store_and_in_caches(store_url: str, tmp_path: Path) -> None:
    writer, reader = machine(store_url, tmp_path / "a"), machine(store_url, tmp_path / "b")
    for iteration in (1, 2):
        writer.publish(3, fake_checkpoint(writer.run_dir(3), iteration, bytes([iteration])), keep_last=2)
    assert reader.fetch_latest(3) == "iter-000002"
    reader.fetch(3, ["iter-000001"])
    writer.publish(3, fake_checkpoint(writer.run_dir(3), 3, b"3"), keep_last=2)

    assert reader.checkpoint_names(3) == ["iter-000002", "iter-000003"]
    assert not writer.fs.exists(f"{writer.root}/run-3/checkpoints/iter-000001")
    assert reader.fetch_latest(3) == "iter-000003"
    cached = sorted(p.name for p in (reader.run_dir(3) / "checkpoints").iterdir())
    assert cached == ["iter-000002", "iter-000003"]  # iter-1 left the cache with the store
    with pytest.raises(CheckpointError, match="iter-000001"):
        reader.fetch(3, ["iter-000001"])


def test_a_checkpoint_the_store_lacks_is_kept_and_adopted(store_url: str, tmp_path: Path) -> None:
    """A checkpoint saved before the store was configured (or whose upload was cut off) is newer than anything in
    the store: fetching does not remove it, and adopting publishes it."""
    first = machine(store_url, tmp_path / "a")
    first.publish(4, fake_checkpoint(first.run_dir(4), 1, b"1"), keep_last=2)
    local_only = fake_checkpoint(first.run_dir(4), 2, b"2")
    assert first.fetch_latest(4) == "iter-000001"
    assert local_only.is_dir()
    first.adopt(4, keep_last=2)
    other = machine(store_url, tmp_path / "b")
    assert other.fetch_latest(4) == "iter-000002"
    assert files_of(other.run_dir(4) / "checkpoints" / "iter-000002") == files_of(local_only)


def test_publishing_an_iteration_again_replaces_it_whole(store_url: str, tmp_path: Path) -> None:
    writer = machine(store_url, tmp_path / "a")
    saved = fake_checkpoint(writer.run_dir(6), 3, b"old")
    writer.publish(6, saved, keep_last=2)
    (saved / "state.pt").write_bytes(b"new state")
    writer.publish(6, saved, keep_last=2)
    reader = machine(store_url, tmp_path / "b")
    assert reader.fetch_latest(6) == "iter-000003"
    assert (reader.run_dir(6) / "checkpoints" / "iter-000003" / "state.pt").read_bytes() == b"new state"
    assert writer.checkpoint_names(6) == ["iter-000003"]
    assert not [p for p in writer.fs.ls(f"{writer.root}/run-6/checkpoints", detail=False) if "partial" in p]


def test_a_fetched_checkpoint_that_is_not_whole_is_refused(store_url: str, tmp_path: Path) -> None:
    writer = machine(store_url, tmp_path / "a")
    writer.publish(5, fake_checkpoint(writer.run_dir(5), 4), keep_last=1)
    writer.fs.pipe_file(f"{writer.root}/run-5/checkpoints/iter-000004/state.pt", b"truncated")
    reader = machine(store_url, tmp_path / "b")
    with pytest.raises(ArtifactError, match="state.pt: 9 bytes"):
        reader.fetch_latest(5)
    assert not (reader.run_dir(5) / "checkpoints" / "iter-000004").exists()


def test_an_unreachable_store_is_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for key, value in S3Server.KEYS.items():
        monkeypatch.setenv(key, value)
    store = machine("s3://nowhere/artifacts", tmp_path)
    with pytest.raises(ArtifactError, match="failed to list the checkpoints of run 1"):
        store.checkpoint_names(1)


def test_the_checkpoint_list_answers_503_when_the_store_fails(
    embedded_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for key, value in S3Server.KEYS.items():
        monkeypatch.setenv(key, value)
    settings = embedded_settings.model_copy(update={"artifacts_url": "s3://nowhere/artifacts"})
    with session_scope(settings.database_url) as session:
        run = Run(name="r", config={}, status="succeeded", created_by="ana", total_iterations=1)
        session.add(run)
        session.flush()
        run_id = run.id
    with live_server(settings) as base_url:
        response = httpx.get(f"{base_url}/api/runs/{run_id}/checkpoints", headers=bearer(settings), timeout=60)
    assert response.status_code == 503, response.text
    assert "artefact store" in response.json()["detail"]


def test_a_run_resumed_on_another_machine_from_the_store_is_exact(
    store_url: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Two iterations on machine A, published; machine B, with an empty cache, fetches the newest checkpoint and
    trains on to four: the same metrics and samples as four iterations straight."""
    config = tiny_run_config(tiny_model_dir, checkpoint__every=2)
    straight = tmp_path / "straight"
    Trainer(config, straight, JsonlRecorder(straight)).train(4)

    first, second = machine(store_url, tmp_path / "a"), machine(store_url, tmp_path / "b")
    records = tmp_path / "records"  # the database's part, shared by both machines
    published: list[str] = []

    def publish(saved: Path) -> None:
        published.append(saved.name)
        first.publish(1, saved, config.checkpoint.keep_last)

    Trainer(config, first.run_dir(1), JsonlRecorder(records), on_checkpoint=publish).train(2)
    assert published == ["iter-000002"]  # due by checkpoint.every and at the end: saved and published once
    assert not second.run_dir(1).exists()
    assert second.fetch_latest(1) == "iter-000002"
    resumed = Trainer(config, second.run_dir(1), JsonlRecorder(records))
    assert resumed.resume() and resumed.iteration == 2
    resumed.train(4)

    assert deterministic_metrics(records) == deterministic_metrics(straight)
    assert read_jsonl(records / "samples.jsonl") == read_jsonl(straight / "samples.jsonl")


def test_a_published_marker_lists_every_file(store_url: str, tmp_path: Path) -> None:
    import json

    writer = machine(store_url, tmp_path / "a")
    saved = fake_checkpoint(writer.run_dir(9), 1)
    writer.publish(9, saved, keep_last=1)
    marker = json.loads(writer.fs.cat_file(f"{writer.root}/run-9/checkpoints/iter-000001{MARKER}"))
    assert marker == {relative: len(content) for relative, content in files_of(saved).items()}


def test_an_export_published_on_one_machine_downloads_on_another(store_url: str, tmp_path: Path) -> None:
    writer = machine(store_url, tmp_path / "worker")
    zipped = writer.run_dir(8) / "exports" / "run-8-merged-1.zip"
    zipped.parent.mkdir(parents=True)
    zipped.write_bytes(b"PK" + bytes(range(256)) * 100)
    writer.publish_file(8, "exports/run-8-merged-1.zip")
    web = machine(store_url, tmp_path / "web")
    fetched = web.fetch_file(8, "exports/run-8-merged-1.zip")
    assert fetched.parent == web.run_dir(8) / "exports" and fetched.read_bytes() == zipped.read_bytes()
    assert [p.name for p in fetched.parent.iterdir()] == [fetched.name]  # no staging file left beside it
    with pytest.raises(FileNotFoundError):
        web.fetch_file(8, "exports/run-8-merged-2.zip")
    assert not (web.run_dir(8) / "exports" / "run-8-merged-2.zip").exists()
