"""Exact resume after a real crash: a run killed with SIGKILL and resumed ends bit for bit where an
uninterrupted run of the same configuration ends, with the same logged losses."""

import json
import signal
import subprocess
import sys

import pytest
import torch

from conftest import SHAKESPEARE, run_cli

STEPS = 150
ARGS = ["--max-steps", str(STEPS), "--layers", "2", "--hidden-size", "64", "--embed-size", "32",
        "--dropout", "0.2", "--batch-size", "8", "--seq-len", "32", "--eval-every", "50", "--save-every", "10",
        "--log-every", "1", "--seed", "3", "--device", "cpu"]


def train_records(run):
    """Everything logged that does not depend on the clock."""
    records = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for timing in ("elapsed", "chars_per_sec", "eval_seconds"):
            record.pop(timing, None)
        records.append(record)
    return records


def kill_after_step(command, step: int) -> None:
    """Start `command` and SIGKILL it once its log shows `step`."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for line in process.stderr:
            if line.startswith(b"step") and int(line.split()[1].replace(b",", b"")) >= step:
                break
        assert process.poll() is None, "training ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("precision", ["fp32", "bf16"])  # bf16: mixed precision (emulated where not native)
def test_sigkill_then_resume_is_bit_for_bit_the_uninterrupted_run(tmp_path, precision):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:30_000])
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    args = [*ARGS, "--precision", precision]  # auto times the model, and a close call may go either way
    result = run_cli("train", corpus, *args, "--out", reference)
    assert result.returncode == 0, result.stderr.decode()

    kill_after_step([sys.executable, "-m", "charnn", "train", str(corpus), *args, "--out", str(crashed)], 65)
    saved_step = torch.load(crashed / "last.pt", weights_only=True)["step"]
    assert 50 <= saved_step < STEPS  # after an evaluation (best.pt), and work left to redo
    (crashed / ".last.pt.x1y2z3.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")  # as a kill mid-save leaves
    result = run_cli("train", "--resume", crashed)
    assert result.returncode == 0, result.stderr.decode()
    assert not list(crashed.glob(".*.tmp"))

    assert json.loads((crashed / "config.json").read_text())["train"]["precision"] == precision
    for name in ("last.pt", "best.pt"):
        ours = torch.load(crashed / name, weights_only=True)["model_state"]
        theirs = torch.load(reference / name, weights_only=True)["model_state"]
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (name, key)
    assert train_records(crashed) == train_records(reference)
