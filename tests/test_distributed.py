"""Data-parallel training with torch.distributed on the CPU (gloo, 2 processes through torchrun):
the result does not depend on the number of processes, a distributed run resumes exactly (also
with another number of processes), and rank 0 alone writes the run."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from charnn import load_checkpoint

from conftest import SHAKESPEARE, run_cli

# no dropout: the masks are the one thing that differs between one process and two
SMALL = ["--layers", "2", "--hidden-size", "32", "--batch-size", "4", "--seq-len", "16", "--dropout", "0",
         "--lr", "1e-2", "--warmup-steps", "0", "--schedule", "constant", "--eval-every", "10", "--log-every", "5",
         "--device", "cpu", "--precision", "fp32", "-q"]


def torchrun(*args, nproc=2, cwd=None, env=None, timeout=180) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "charnn", *map(str, args)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, capture_output=True, cwd=cwd, env=environment, timeout=timeout)


def launched(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
    """`charnn ... --nproc 2`: charnn's own launcher, which starts without PyTorch (torchrun loads it first)."""
    return run_cli(*args, "--nproc", "2", env={"OMP_NUM_THREADS": "1", **(env or {})}, timeout=timeout)


def records(run, kind):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if json.loads(line)["kind"] == kind]


def weights(run, name="last.pt"):
    return load_checkpoint(run / name)["model_state"]


def assert_close(a, b, tolerance):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=tolerance, rtol=0), key


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp") / "corpus.txt"
    path.write_bytes(SHAKESPEARE.read_bytes()[:30_000])
    return path


@pytest.fixture(scope="module")
def reference(corpus):
    """One process, 40 steps, and a 2-process run of the same 40 steps: made once, compared by several tests."""
    root = corpus.parent
    one = run_cli("train", corpus, *SMALL, "--max-steps", "40", "--out", root / "one",
                  env={"CHARNN_RUNS_DIR": str(root / "runs-one")})
    assert one.returncode == 0, one.stderr.decode()
    two = torchrun("train", corpus, *SMALL, "--max-steps", "40", env={"CHARNN_RUNS_DIR": str(root / "runs-two")})
    assert two.returncode == 0, two.stderr.decode()
    return {"one": root / "one", "runs-two": root / "runs-two"}


def test_two_processes_train_what_one_process_trains(reference):
    two_runs = [p for p in reference["runs-two"].iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(two_runs) == 1  # rank 1 made no run directory of its own
    two, one = two_runs[0], reference["one"]
    train_one, train_two = records(one, "train"), records(two, "train")
    assert [r["step"] for r in train_two] == [5, 10, 15, 20, 25, 30, 35, 40]  # each record once: rank 0 alone
    assert train_one[-1]["loss"] < train_one[0]["loss"] - 0.3  # it learned something worth comparing
    for a, b in zip(train_one, train_two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["chars"] == b["chars"]
    for a, b in zip(records(one, "eval"), records(two, "eval")):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert_close(weights(one), weights(two), 1e-4)
    assert sorted(p.name for p in two.iterdir()) == ["best.pt", "best.safetensors", "config.json", "last.pt",
                                                      "metrics.jsonl", "tokens.npy"]
    # the checkpoint holds the whole batch's state, and samples in a plain process
    assert load_checkpoint(two / "last.pt")["train_state"]["hidden"][0].shape == (2, 4, 32)
    sampled = run_cli("sample", two, "-n", "50", "--seed", "1")
    assert sampled.returncode == 0 and len(sampled.stdout.decode()) == 50


def test_a_stopped_distributed_run_resumes_exactly_on_two_or_one_processes(corpus, reference, tmp_path):
    first = launched("train", corpus, *SMALL, "--max-steps", "20", "--out", tmp_path / "run",
                     env={"CHARNN_RUNS_DIR": str(tmp_path / "runs")})
    assert first.returncode == 0, first.stderr.decode()
    (tmp_path / "copy").mkdir()
    for f in ("config.json", "metrics.jsonl", "tokens.npy", "last.pt", "best.pt"):
        (tmp_path / "copy" / f).write_bytes((tmp_path / "run" / f).read_bytes())
    resumed = launched("train", "--resume", tmp_path / "run", "--max-steps", "40",
                       env={"CHARNN_RUNS_DIR": str(tmp_path / "runs")})
    assert resumed.returncode == 0, resumed.stderr.decode()
    straight = [p for p in reference["runs-two"].iterdir() if p.is_dir() and not p.name.startswith(".")][0]
    assert_close(weights(tmp_path / "run"), weights(straight), 1e-6)
    assert records(tmp_path / "run", "train") == [
        {**r, "chars_per_sec": r2["chars_per_sec"], "elapsed": r2["elapsed"]}
        for r, r2 in zip(records(straight, "train"), records(tmp_path / "run", "train"))]
    # the same checkpoint resumed by a single process: the same result, to rounding
    single = run_cli("train", "--resume", tmp_path / "copy", "--max-steps", "40",
                     env={"CHARNN_RUNS_DIR": str(tmp_path / "runs")})
    assert single.returncode == 0, single.stderr.decode()
    assert_close(weights(tmp_path / "copy"), weights(straight), 1e-4)


def test_sigterm_stops_every_rank_which_saves_once_and_resumes_exactly(corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CHARNN_RUNS_DIR": str(tmp_path / "runs")}
    run = tmp_path / "run"
    command = [sys.executable, "-m", "charnn", "train", str(corpus), *SMALL, "--max-steps", "100000",
               "--nproc", "2", "--out", str(run)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() or len(records(run, "train")) < 2:  # past step 10
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read().decode()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143 and b"Traceback" not in err and b"stopped by SIGTERM" in err
    stopped_at = load_checkpoint(run / "last.pt")["step"]
    assert stopped_at >= 10
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == []  # no temporary files left
    resumed = launched("train", "--resume", run, "--max-steps", stopped_at + 10,
                       env={"CHARNN_RUNS_DIR": str(tmp_path / "runs")})
    assert resumed.returncode == 0, resumed.stderr.decode()
    steps = [r["step"] for r in records(run, "train")]
    assert steps == sorted(set(steps)) and load_checkpoint(run / "last.pt")["step"] == stopped_at + 10
    # the same number of steps without the kill (a constant schedule does not depend on the limit)
    straight = launched("train", corpus, *SMALL, "--max-steps", stopped_at + 10, "--out", tmp_path / "straight",
                        env={"CHARNN_RUNS_DIR": str(tmp_path / "runs")})
    assert straight.returncode == 0, straight.stderr.decode()
    assert_close(weights(run), weights(tmp_path / "straight"), 1e-6)


def test_a_batch_that_does_not_divide_is_refused_on_every_rank(corpus, tmp_path):
    args = [a if a != "4" else "5" for a in SMALL]
    result = torchrun("train", corpus, *args, "--max-steps", "5", "--out", tmp_path / "run")
    assert result.returncode != 0 and b"does not divide among 2 processes" in result.stderr
    assert not (tmp_path / "run").exists()
