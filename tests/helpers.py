"""Helpers the tests share: tiny models built on the spot and run configs that train in seconds. Nothing is
downloaded. (Fixtures live in conftest.py; helpers are imported from here.)"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meal_core.config import RunConfig, parse_config
from meal_core.data import load_prompts

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tokenizer(directory: Path) -> Any:
    """A byte-level BPE tokenizer trained on the shipped prompts, with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [p.text for p in load_prompts("builtin:train")] + [p.text for p in load_prompts("builtin:eval")]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def tiny_llama_config(tokenizer: Any, **overrides: Any) -> Any:
    """A two-layer, 32-wide Llama config over `tokenizer`: small enough to train in a test. `overrides` replace or
    add any field (a wider model for vLLM's kernels, more labels for a classifier)."""
    from transformers import LlamaConfig

    fields = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
    }
    return LlamaConfig(**{**fields, **overrides})


def build_tiny_causal_lm(directory: Path, seed: int = 0, **config: Any) -> Path:
    """`config` overrides the Llama config, e.g. initializer_range: the default 0.02 gives a near-uniform next-token
    distribution that attention adapters alone can hardly sharpen (the final norm bounds the logits)."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(directory)
    torch.manual_seed(seed)
    config = tiny_llama_config(tokenizer, tie_word_embeddings=True, **config)
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def build_vllm_tiny_lm(directory: Path) -> Path:
    """A tiny random Llama that vLLM's CPU kernels can serve (head size 32: there is no smaller kernel), with peaked
    next-token distributions so that greedy decoding has clear winners, not float ties."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tiny_tokenizer(directory)
    torch.manual_seed(0)
    config = tiny_llama_config(
        tokenizer,
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        initializer_range=0.2,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    return directory


#: Where the engine's tests put their tiny models: the CPU, unless MEAL_TEST_DEVICE says otherwise
#: (scripts/gpu_check.sh runs them with MEAL_TEST_DEVICE=cuda).
TEST_DEVICE = os.environ.get("MEAL_TEST_DEVICE", "cpu")


def tiny_run_config(model_dir: Path, **overrides: Any) -> RunConfig:
    """A whole run that takes seconds on a CPU: cheap objectives, few prompts, short responses."""
    data: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir), "device": TEST_DEVICE},
        "lora": {"r": 4, "alpha": 8},
        "objectives": [{"name": "positivity", "type": "sentiment"}, {"name": "readability", "type": "readability"}],
        "data": {"prompts_per_iteration": 4, "max_train_prompts": 12},
        "algorithm": {
            "samples_per_prompt": 3,
            "max_new_tokens": 12,
            "base_loss": "sft",  # the default adds the pairwise loss: four more forward passes per corner pair
            "calibration_prompts": 4,
            "policy_lr": 5e-3,
            "micro_batch_size": 4,
            "max_policy_steps": 3,
            "weight_lr": 1.0,
            "meta_lr": 1e-2,
            # The tiny model writes byte soup: the degeneracy guard would reject all of it.
            "max_repeated_ngram_share": 1.0,
            "max_unknown_word_share": 1.0,
        },
        "eval": {"every": 2, "prompts": 2, "grid_points": 3, "probe_pairs": 3},
        "checkpoint": {"every": 2, "keep_last": 3},
        "iterations": 4,
        "seed": 7,
    }
    for dotted, value in overrides.items():
        *path, leaf = dotted.split("__")
        node = data
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_config(data)


NONDETERMINISTIC_KEYS = ("time/", "throughput/")


def deterministic_metrics(run_dir: Path) -> list[tuple[int, str, float]]:
    """A JSONL run's metrics without the timings: what two runs of the same seed must agree on."""
    from meal_core.recorder import read_jsonl

    return [
        (row["step"], row["key"], row["value"])
        for row in read_jsonl(run_dir / "metrics.jsonl")
        if not row["key"].startswith(NONDETERMINISTIC_KEYS)
    ]


def randomize_lora(policy: Any, seed: int) -> None:
    """LoRA B starts at zero (a no-op adapter); random values in every adapter weight make each adapter (each
    expert) change the model's output, and differently."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


# -- a synthetic pair of objectives for the tiny model ---------------------------------------------------------------
# Used as `python` objectives ("helpers:letters"). The tiny model's byte-level vocabulary holds letter tokens and
# symbol tokens; with a fixed token budget every letter is room not given to a symbol, so the pair conflicts
# strongly, and a tiny model can learn either side within seconds.


def letters(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(sum(c.isascii() and c.isalpha() for c in r)) for r in responses]


def symbols(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(sum(not (c.isascii() and c.isalpha()) and not c.isspace() for c in r)) for r in responses]


SYNTHETIC_OBJECTIVES = [
    {"name": "letters", "type": "python", "function": "helpers:letters"},
    {"name": "symbols", "type": "python", "function": "helpers:symbols"},
]

PACE_S = 1.0


def paced_letters(prompts: list[str], responses: list[str]) -> list[float]:
    """letters(), taking PACE_S seconds a batch, as a real reward model takes its time: a run with this objective
    spends at least PACE_S on each iteration however fast the machine is (fault tests need a run that is still
    training when the fault ends). Used as `helpers:paced_letters`; the worker needs tests/ on its PYTHONPATH."""
    time.sleep(PACE_S)
    return letters(prompts, responses)


# -- users: every request has one ------------------------------------------------------------------------------------


def ensure_user(settings: Any, name: str, role: str, password: str | None = None) -> None:
    """A user of that role in the settings' database (created if missing; its role set if it exists)."""
    from app import auth
    from app.store.db import session_scope
    from meal_core.enums import Role

    with session_scope(settings.database_url) as session:
        user = auth.find_user(session, name)
        if user is None:
            auth.create_user(session, name, Role(role), password)
        else:
            user.role = role


@contextlib.contextmanager
def as_user(settings: Any, role: str, name: str | None) -> Iterator[tuple[Any, Any, Any]]:
    """(database session, keyring, user) for a user of `role`, named after the role unless `name` is given."""
    from app import auth
    from app.store.db import session_scope

    name = name or role
    ensure_user(settings, name, role)
    keyring = auth.Keyring(auth.load_secret(settings))
    with session_scope(settings.database_url) as session:
        user = auth.find_user(session, name)
        assert user is not None
        yield session, keyring, user


def bearer(settings: Any, role: str = "trainer", name: str | None = None) -> dict[str, str]:
    """An Authorization header with a fresh API token of a user of `role`."""
    from app import auth

    with as_user(settings, role, name) as (session, keyring, user):
        token, _ = auth.create_token(session, keyring, user, "test")
    return {"Authorization": f"Bearer {token}"}


def session_cookie(settings: Any, role: str = "trainer", name: str | None = None) -> tuple[str, str]:
    """A logged-in browser session of a user of `role`: (cookie value, the CSRF token its pages carry)."""
    from app import auth

    with as_user(settings, role, name) as (session, keyring, user):
        cookie, login = auth.start_session(session, keyring, user)
        return cookie, login.csrf_token


# -- the browser: Debian's Chromium, driven by playwright (tests/conftest.py's `page`) ------------------------------

CHROMIUM = Path("/usr/bin/chromium")
#: How long a browser test waits for a condition (a page loaded, a list filled, the worker's answer shown) before it
#: fails. Generous: every wait ends as soon as its condition holds, and a machine at load 5–16 on 2 cores took well
#: over the 20 s the waits used to allow for the playground's run list.
BROWSER_WAIT_MS = 300_000
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# -- real worker processes -------------------------------------------------------------------------------------------

MEAL = Path(sys.executable).with_name("meal")


class ServiceProcess:
    """A `meal` command (web server, worker, …) in its own process group, its output in a file."""

    kind = "service"

    def __init__(self, command: list[str], env: dict[str, str], directory: Path) -> None:
        self.command, self.env, self.directory = command, env, directory
        self.log_path = directory / f"{self.kind}-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a process group of its own: teardown kills all of it
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if not self.alive():
                pytest.fail(f"the worker exited (code {self.process and self.process.poll()}) before {text!r}")
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} not in the worker's output within {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with_signal(self.process.pid, signal.SIGTERM)  # warm shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        with_signal(self.process.pid, signal.SIGKILL)  # whatever is left of the group
        self.process.wait(timeout=10)


class WorkerProcess(ServiceProcess):
    """`meal worker` with a unique node name and INFO logging, plus `args`."""

    kind = "worker"

    def __init__(self, env: dict[str, str], directory: Path, *args: str) -> None:
        name = f"test-{uuid.uuid4().hex[:8]}@%h"
        super().__init__([str(MEAL), "worker", "--name", name, "--loglevel", "INFO", *args], env, directory)


def with_signal(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(group, sig)


def trained_run(settings: Any, model_dir: Path, created_by: str = "ana", **overrides: Any) -> int:
    """A stored run of the tiny model trained for two iterations (a checkpoint each) in the settings' runs folder,
    with its last evaluation in the database: what the playground and review need."""
    from app.store import run_state
    from app.store.db import session_scope
    from app.store.models import Evaluation
    from meal_core.recorder import NullRecorder
    from meal_core.trainer import Trainer

    config = tiny_run_config(model_dir, **{"iterations": 2, "checkpoint__every": 1, **overrides})
    with session_scope(settings.database_url) as session:
        run_id: int = run_state.create_run(session, "trained", config.model_dump(mode="json"), 2, created_by).id
    trainer = Trainer(config, settings.runs_dir / f"run-{run_id}", NullRecorder())
    trainer.train()
    result = trainer.evaluation(trainer.eval_prompts[:2], 1, 2)
    with session_scope(settings.database_url) as session:
        session.add(
            Evaluation(
                run_id=run_id,
                step=2,
                objectives=result.objectives,
                points=[p.__dict__ for p in result.points],
                hypervolume=result.hypervolume,
                reference_point=result.reference_point,
                controllability=result.controllability,
                probe=result.probe,
            )
        )
    return run_id


def worker_env(settings: Any) -> dict[str, str]:
    """The environment of a `meal worker` for these settings: only they decide where data and messages go."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MEAL_")}
    env.update(
        MEAL_DATA_DIR=str(settings.data_dir),
        MEAL_DATABASE_URL=settings.database_url,
        MEAL_BROKER_URL=settings.broker_url,
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    return env


# -- fault injection: a private Redis server, a TCP proxy that can cut a connection -----------------------------------


def wait_healthy(base_url: str, alive: Any, what: Any = "", timeout: float = 120) -> None:
    """Poll `/healthz` until it answers 200; fail when `alive()` turns false or the time is up, showing `what()`."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not alive() or time.monotonic() > deadline:
            pytest.fail(f"the web server at {base_url} did not become healthy: {what() if callable(what) else what}")
        time.sleep(0.3)


def terminate(process: subprocess.Popen[bytes] | None, grace: float = 30) -> None:
    """SIGTERM a server process of a test, SIGKILL if it is still there after `grace` seconds."""
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server of the test's own on a free port of 127.0.0.1 (never the shared one), with its append-only file
    in `directory`, fsynced at every write: killed with SIGKILL and started again on the same port, it comes back
    with every message it had taken."""

    def __init__(self, directory: Path) -> None:
        self.directory, self.port = directory, free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = -1

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> Any:
        import redis

        return redis.Redis.from_url(self.url(db), socket_connect_timeout=2, socket_timeout=5)

    def start(self, timeout: float = 30) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.fail("redis-server is not installed; these tests start a Redis server of their own", pytrace=False)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"]
        command += ["--logfile", str(self.directory / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.restarts += 1
        deadline = time.monotonic() + timeout
        with contextlib.closing(self.client()) as client:
            while True:
                try:
                    if client.ping():
                        return
                except Exception:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = self.directory / "redis.log"
                        pytest.fail(f"redis-server did not start: {log.read_text() if log.exists() else ''}")
                    time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown, no last save."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def stop(self) -> None:
        terminate(self.process)


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target` (host, port), two threads per connection. `cut()` drops every proxied
    connection and stops listening, so new connections are refused, until `restore()` listens again on the same
    port: a database server that went away and came back, as its clients see it."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.connections = 0  # accepted so far
        self.dropped = 0  # connections that cut() closed
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name=f"proxy-{self.port}", daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
            listener.close()
        with self._lock:
            dropped, self._open = self._open, set()
        self.dropped += len(dropped) // 2
        for sock in dropped:
            self._close(sock)

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut(): the listener is shut
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut() meanwhile
                    client.close()
                    upstream.close()
                    return
                self._open |= {client, upstream}
                self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._open -= {source, sink}
        self._close(source)
        self._close(sink)

    @staticmethod
    def _close(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class S3Server:
    """An S3 protocol server of the test's own (moto's `moto_server`, a dev dependency) on a free port: the artefact
    store that workers on different machines share. `env()` is what a process needs to reach it (the standard AWS
    variables), `bucket()` makes a fresh bucket and returns its URL."""

    KEYS = {"AWS_ACCESS_KEY_ID": "meal-test", "AWS_SECRET_ACCESS_KEY": "meal-test", "AWS_DEFAULT_REGION": "us-east-1"}

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._buckets = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**self.KEYS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout: float = 60) -> None:
        binary = Path(sys.executable).parent / "moto_server"
        self.process = subprocess.Popen(
            [str(binary), "-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"moto_server did not start (exit code {self.process.poll()})", pytrace=False)
                time.sleep(0.1)

    def bucket(self) -> str:
        import s3fs

        self._buckets += 1
        name = f"meal-{self._buckets}"
        fs = s3fs.S3FileSystem(
            key=self.KEYS["AWS_ACCESS_KEY_ID"],
            secret=self.KEYS["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": self.endpoint},
        )
        fs.mkdir(name)
        return f"s3://{name}/artifacts"

    def stop(self) -> None:
        terminate(self.process)
