import compileall
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

# The suite runs in two pytest workers on two cores, and many tests start `charnn` processes beside them:
# with more busy threads than cores, PyTorch's OpenMP threads spin-wait for each other and everything
# crawls. One thread each, set before PyTorch loads here, and inherited by every process a test starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

from charnn import ModelConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent
SHAKESPEARE = REPO / "corpora" / "tinyshakespeare.txt"


def pytest_configure(config):
    """Compile charnn's modules once, as the first `charnn` command of a user's would: most tests start
    `python -m charnn` in a subprocess, and where PYTHONDONTWRITEBYTECODE is set (CI machines) each one
    would otherwise compile every module it imports again (about 0.15 s a process)."""
    compileall.compile_dir(REPO / "charnn", quiet=1)


@pytest.fixture(autouse=True)
def _isolated_runs(tmp_path, monkeypatch):
    """Every test gets its own runs/ root, so 'the newest run' never leaks between tests."""
    monkeypatch.setenv("CHARNN_RUNS_DIR", str(tmp_path / "runs"))
    torch.manual_seed(0)


def tiny_model_config(vocab_size: int, cell: str = "lstm", **overrides) -> ModelConfig:
    options = dict(vocab_size=vocab_size, cell=cell, num_layers=1, hidden_size=32, embed_size=16, dropout=0.0)
    options.update(overrides)
    return ModelConfig(**options)


def tiny_train_config(**overrides) -> TrainConfig:
    options = dict(batch_size=8, seq_len=16, lr=1e-2, warmup_steps=10, eval_every=10_000, log_every=10,
                   save_every_seconds=None, device="cpu", seed=0, precision="fp32")
    options.update(overrides)
    return TrainConfig(**options)


def run_cli(*args, input: bytes | None = None, cwd=None, env=None, timeout=120) -> subprocess.CompletedProcess:
    """`python -m charnn ARGS` in a subprocess, as a user would run it."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "200")
    return subprocess.run(
        [sys.executable, "-m", "charnn", *map(str, args)],
        input=input if input is not None else b"",
        capture_output=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


TINY = ["--max-steps", "30", "--layers", "1", "--hidden-size", "32", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "15", "--log-every", "10", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    """A corpus and a trained run, made once through the real CLI in a subprocess."""
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:20_000])
    env = {"CHARNN_RUNS_DIR": str(root / "runs")}
    result = run_cli("train", corpus, *TINY, "--out", root / "run", cwd=root, env=env)
    assert result.returncode == 0, result.stderr.decode()
    return {"root": root, "corpus": corpus, "run": root / "run", "env": env}


class Terminal:
    """A child process on a pseudo-terminal: type lines, read what the screen shows."""

    def __init__(self, args, env, inherit: bool = True):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen([sys.executable, "-m", "charnn", *map(str, args)], stdin=slave,
                                        stdout=slave, stderr=slave, env={**os.environ, **env} if inherit else env,
                                        close_fds=True)
        os.close(slave)
        self.screen = b""

    def read_until(self, marker: bytes, seconds: float = 60) -> bytes:
        deadline, start = time.monotonic() + seconds, len(self.screen)
        while marker not in self.screen[start:]:
            ready, _, _ = select.select([self.master], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"timed out waiting for {marker!r}; screen so far: {self.screen!r}")
            try:
                self.screen += os.read(self.master, 4096).replace(b"\r\n", b"\n")
            except OSError:  # the child closed the terminal
                raise AssertionError(f"terminal closed before {marker!r}: {self.screen!r}") from None
        return self.screen[start:]

    def read_to_end(self, seconds: float = 120) -> bytes:
        """Everything until the child closes the terminal (it exited)."""
        deadline = time.monotonic() + seconds
        while True:
            ready, _, _ = select.select([self.master], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                raise AssertionError(f"timed out waiting for the end; screen so far: {self.screen!r}")
            try:
                data = os.read(self.master, 4096)
            except OSError:  # Linux: EIO once the child has closed its side
                return self.screen
            if not data:
                return self.screen
            self.screen += data.replace(b"\r\n", b"\n")

    def type(self, line: bytes) -> None:
        os.write(self.master, line)

    def close(self) -> int:
        code = self.process.wait(timeout=60)
        os.close(self.master)
        return code
