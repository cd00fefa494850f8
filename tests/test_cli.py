"""The command line, end to end: real subprocesses for the main paths, and every bad input a user can
cause answered by one clear line on stderr, a non-zero exit, no traceback and no file changed."""

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from charnn.cli import main
from charnn.generate.output import BufferedOutput, PipeClosed

from conftest import SHAKESPEARE, TINY, run_cli

def snapshot(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --- the main paths, in subprocesses ---------------------------------------------------------


def test_train_writes_a_complete_run_and_nothing_on_stdout(workdir):
    run = workdir["run"]
    assert {"config.json", "metrics.jsonl", "last.pt", "best.pt", "tokens.npy"} <= set(snapshot(run))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [15, 30]
    assert all(r["loss"] > 0 for r in records if r["kind"] == "train")
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["hidden_size"] == 32 and config["train"]["max_steps"] == 30
    assert (workdir["root"] / "runs" / "latest").read_text().strip() == str(run.resolve())


def test_sample_streams_only_text_to_stdout(workdir):
    result = run_cli("sample", workdir["run"], "-n", "200", "--seed", "5", "--prime", "ROMEO:")
    assert result.returncode == 0 and result.stderr == b""
    text = result.stdout.decode()
    assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 200
    again = run_cli("sample", workdir["run"], "-n", "200", "--seed", "5", "--prime", "ROMEO:")
    assert again.stdout == result.stdout


def test_sample_and_eval_default_to_the_newest_run(workdir):
    result = run_cli("sample", "-n", "20", "--seed", "1", "--no-prime-echo", cwd=workdir["root"], env=workdir["env"])
    assert result.returncode == 0 and len(result.stdout.decode()) == 20
    result = run_cli("eval", workdir["corpus"], "--json", cwd=workdir["root"], env=workdir["env"])
    assert result.returncode == 0, result.stderr.decode()
    report = json.loads(result.stdout)
    assert {"loss", "bpc", "perplexity", "chars"} <= report.keys()
    assert report["chars"] == 20_000 - 1
    assert abs(report["bpc"] - report["loss"] / 0.6931471805599453) < 1e-9


def test_eval_json_on_a_named_model_and_on_its_own_validation_text(workdir):
    result = run_cli("eval", workdir["run"], workdir["corpus"], "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert 0 < report["loss"] < 5 and report["unknown_chars"] == 0
    own = json.loads(run_cli("eval", workdir["run"], "--json").stdout)
    assert own["text"] == "validation" and own["chars"] == 2_000 - 1
    table = run_cli("eval", workdir["run"], workdir["corpus"])
    assert table.returncode == 0 and table.stdout == b"" and b"bits per character" in table.stderr


def test_eval_counts_unknown_characters(workdir, tmp_path):
    text = tmp_path / "other.txt"
    text.write_text("Hello, world — ∑ unseen ✓ characters\n" * 10, encoding="utf-8")
    report = json.loads(run_cli("eval", workdir["run"], text, "--json").stdout)
    assert report["unknown_chars"] == 30
    assert report["chars"] == len(text.read_text()) - 30 - 1
    assert "skipped" in report["unknown_policy"]


def test_sample_into_head_ends_quietly(workdir):
    command = (f"set -o pipefail; {sys.executable} -m charnn sample {workdir['run']} -n 100000 --seed 1 "
               f"| head -c 50")
    result = subprocess.run(["bash", "-c", command], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b"" and len(result.stdout) == 50


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_sampling_keeps_every_character_it_made(workdir, tmp_path, signum, code):
    """`sample` buffers its output itself (stdout's own buffer is off under PYTHONUNBUFFERED): a signal
    must still leave a whole, unchanged prefix of the text the same seed gives uninterrupted."""
    out = tmp_path / "out.txt"
    with open(out, "wb") as stdout:
        process = subprocess.Popen([sys.executable, "-m", "charnn", "sample", workdir["run"], "-n", "100000000",
                                    "--seed", "1"], stdout=stdout, stderr=subprocess.PIPE,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 120
        while out.stat().st_size < 3000 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr.decode()
    text = out.read_bytes().decode()
    assert len(text) >= 3000
    uninterrupted = run_cli("sample", workdir["run"], "-n", str(len(text)), "--seed", "1").stdout.decode()
    assert text == uninterrupted


def test_output_holds_small_writes_until_its_interval_or_close():
    stream = io.BytesIO()
    output = BufferedOutput(stream, interval=3600)
    for piece in (b"a", b"bc", b"d"):
        output.write(piece)
    assert stream.getvalue() == b""  # one system call later, not one per character
    output.close()
    assert stream.getvalue() == b"abcd"

    class GoneReader(io.BytesIO):
        def write(self, data):
            raise BrokenPipeError

    gone = BufferedOutput(GoneReader(), interval=0)
    with pytest.raises(PipeClosed):
        gone.write(b"x")
    gone.close()  # nothing more is attempted once the reader has gone


def test_num_samples_with_a_separator(workdir):
    result = run_cli("sample", workdir["run"], "-n", "30", "--num-samples", "3", "--separator", "\\0",
                     "--prime", "A", "--seed", "2")
    assert result.stdout.endswith(b"\0")  # every sample ends with it, the last too (records for read -d '')
    samples = result.stdout.decode().split("\0")[:-1]
    assert len(samples) == 3 and all(len(s) == 31 and s.startswith("A") for s in samples)


def test_train_from_stdin_and_resume(workdir, tmp_path):
    out = tmp_path / "piped"
    result = run_cli("train", "-", *TINY, "--out", out, input=workdir["corpus"].read_bytes())
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads((out / "config.json").read_text())["corpus"]["sources"] == ["-"]
    result = run_cli("train", "--resume", out, "--max-steps", "40", "--device", "cpu")
    assert result.returncode == 0, result.stderr.decode()
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 40 and b"40 steps" in result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["max_steps"] == 40 and config["corpus"]["sources"] == ["-"]  # the limit in force now


def test_byte_level_model_accepts_invalid_utf8(tmp_path):
    corpus = tmp_path / "mixed.bin"
    corpus.write_bytes((b"caf\xe9 \xff\xfe bytes\n" + SHAKESPEARE.read_bytes()[:3000]) * 3)
    result = run_cli("train", corpus, "--bytes", *TINY, "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr.decode()
    sample = run_cli("sample", tmp_path / "run", "-n", "64", "--prime", "caf", "--seed", "0")
    assert sample.returncode == 0 and len(sample.stdout) == 3 + 64


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_interrupted_training_saves_and_says_how_to_resume(tmp_path, signum, code):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:50_000])
    process = subprocess.Popen(
        [sys.executable, "-m", "charnn", "train", corpus, "--out", tmp_path / "run", "--max-steps", "100000",
         "--layers", "1", "--hidden-size", "32", "--device", "cpu", "--log-every", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    for line in process.stderr:  # wait until training is really under way
        if line.startswith(b"step"):
            break
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stderr.decode()
    assert f"stopped by {signum.name}".encode() in stderr and b"Traceback" not in stderr
    assert b"resume with: charnn train --resume" in stderr
    assert (tmp_path / "run" / "last.pt").is_file()


# --- bad input: one clear line, non-zero exit, no traceback, nothing changed ------------------


def call(argv, capfd) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_clear_line(code, out, err, *needles):
    assert code not in (0, None)
    assert out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("charnn: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def bad_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "short.txt").write_text("too short\n")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1") * 5000)
    (tmp_path / "binary.bin").write_bytes(bytes(range(256)) * 100)
    (tmp_path / "nodir").mkdir()
    (tmp_path / "nodir" / "image.png").write_bytes(b"\x89PNG\0\0" * 100)
    (tmp_path / "good.txt").write_bytes(SHAKESPEARE.read_bytes()[:20_000])
    (tmp_path / "other.txt").write_bytes(SHAKESPEARE.read_bytes()[-20_000:])
    (tmp_path / "not_a_checkpoint.pt").write_bytes(b"hello")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "pending").mkdir()
    (tmp_path / "pending" / "config.json").write_text("{}")
    return tmp_path


TRAIN_CASES = [
    (["missing.txt"], ["missing.txt", "no such file"]),
    (["nodir"], ["no text files"]),
    (["empty.txt"], ["empty"]),
    (["short.txt"], ["too small"]),
    (["latin1.txt"], ["latin1.txt", "UTF-8", "--bytes"]),
    (["binary.bin"], ["binary.bin", "UTF-8", "--bytes"]),
    (["good.txt", "--batch-size", "0"], ["--batch-size"]),
    (["good.txt", "--seq-len", "-3"], ["--seq-len"]),
    (["good.txt", "--hidden-size", "0"], ["--hidden-size"]),
    (["good.txt", "--layers", "0"], ["--layers"]),
    (["good.txt", "--val-frac", "0"], ["--val-frac"]),
    (["good.txt", "--val-frac", "1.5"], ["--val-frac"]),
    (["good.txt", "--dropout", "1"], ["--dropout"]),
    (["good.txt", "--lr", "-1"], ["--lr"]),
    (["good.txt", "--cell", "transformer"], ["--cell"]),
    (["good.txt", "--device", "tpu"], ["--device"]),
    (["good.txt", "--max-time", "soon"], ["--max-time"]),
    (["good.txt", "--epochs", "0"], ["--epochs"]),
    (["good.txt", "--batch-size", "many"], ["--batch-size"]),
    (["good.txt", "--tie-weights", "--embed-size", "16"], ["--tie-weights"]),
    (["good.txt", "--hidden-size", "300000"], ["out of memory", "building the model", "--hidden-size"]),
    ([], ["no corpus"]),
]


@pytest.mark.parametrize("args,needles", TRAIN_CASES, ids=[" ".join(a) or "nothing" for a, _ in TRAIN_CASES])
def test_bad_train_input(bad_files, monkeypatch, capfd, args, needles):
    monkeypatch.chdir(bad_files)
    before = snapshot(bad_files)
    code, out, err = call(["train", *args, "--out", "run", "--max-steps", "1", "--device", "cpu"]
                          if "--device" not in args else ["train", *args, "--out", "run"], capfd)
    assert_one_clear_line(code, out, err, *needles)
    assert snapshot(bad_files) == before
    assert not (bad_files / "run" / "last.pt").exists()


def test_empty_stdin_is_a_clear_error(tmp_path):
    result = run_cli("train", "-", "--out", tmp_path / "run", input=b"")
    err = result.stderr.decode()
    assert result.returncode == 1 and "stdin" in err and "empty" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cuda_without_a_gpu_is_a_clear_error(bad_files, capfd):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    code, out, err = call(["train", bad_files / "good.txt", "--device", "cuda"], capfd)
    assert_one_clear_line(code, out, err, "--device cuda", "no CUDA")


def test_existing_run_is_never_overwritten_unless_asked(workdir, bad_files, capfd):
    run = bad_files / "run"
    shutil.copytree(workdir["run"], run)
    before = snapshot(run)
    code, out, err = call(["train", bad_files / "good.txt", "--out", run, *TINY], capfd)
    assert_one_clear_line(code, out, err, "already holds a run", "--overwrite")
    assert snapshot(run) == before
    # --overwrite replaces the run only once the new one can start: a model too big leaves the old one whole
    code, out, err = call(["train", bad_files / "good.txt", "--out", run, "--overwrite", *TINY,
                           "--hidden-size", "300000"], capfd)
    assert_one_clear_line(code, out, err, "out of memory")
    assert snapshot(run) == before


RESUME_CASES = [
    (["--resume", "nowhere"], ["nowhere"]),
    (["--resume", "pending"], ["no last.pt"]),
    (["--resume", "run", "--hidden-size", "64"], ["--hidden-size 64", "contradicts"]),
    (["--resume", "run", "--batch-size", "8"], ["--batch-size 8", "contradicts"]),
    (["--resume", "run", "--cell", "gru"], ["--cell gru", "contradicts"]),
    (["other.txt", "--resume", "run"], ["not the one this run was trained on"]),
    (["--resume", "run", "--bytes"], ["byte"]),
]


@pytest.mark.parametrize("args,needles", RESUME_CASES, ids=[" ".join(a) for a, _ in RESUME_CASES])
def test_bad_resume(workdir, bad_files, monkeypatch, capfd, args, needles):
    shutil.copytree(workdir["run"], bad_files / "run")
    monkeypatch.chdir(bad_files)
    before = snapshot(bad_files / "run")
    code, out, err = call(["train", *args], capfd)
    assert_one_clear_line(code, out, err, *needles)
    assert snapshot(bad_files / "run") == before


SAMPLE_CASES = [
    (["RUN", "--temp", "-1"], ["--temp", "greedy"]),
    (["RUN", "--top-p", "0"], ["--top-p"]),
    (["RUN", "--top-p", "1.5"], ["--top-p"]),
    (["RUN", "--top-k", "0"], ["--top-k"]),
    (["RUN", "-n", "-5"], ["--length"]),
    (["RUN", "--num-samples", "0"], ["--num-samples"]),
    (["RUN", "--prime", "Zürich ∑"], ["not in the model's vocabulary", "'∑'", "--drop-unknown"]),
    (["RUN", "--prime-file", "missing.txt"], ["missing.txt"]),
    (["missing_run"], ["missing_run", "no such"]),
    (["pending"], ["pending", "no checkpoint yet"]),
    (["not_a_checkpoint.pt"], ["not_a_checkpoint.pt"]),
    (["empty.pt"], ["empty.pt", "empty"]),
    (["foreign.pt"], ["foreign.pt", "not a charnn checkpoint"]),
    (["good.txt"], ["good.txt"]),
]


@pytest.mark.parametrize("args,needles", SAMPLE_CASES, ids=[" ".join(a) for a, _ in SAMPLE_CASES])
def test_bad_sample_input(workdir, bad_files, monkeypatch, capfd, args, needles):
    monkeypatch.chdir(bad_files)
    args = [str(workdir["run"]) if a == "RUN" else a for a in args]
    before = snapshot(workdir["run"])
    code, out, err = call(["sample", *args], capfd)
    assert_one_clear_line(code, out, err, *needles)
    assert snapshot(workdir["run"]) == before


def test_unknown_prime_characters_can_be_dropped(workdir, capfd):
    code, out, err = call(["sample", workdir["run"], "--prime", "ROMEO∑:", "--drop-unknown", "-n", "5",
                           "--seed", "0"], capfd)
    assert code == 0 and out.startswith("ROMEO:") and len(out) == 11


def test_no_model_anywhere_is_a_clear_error(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    code, out, err = call(["sample"], capfd)
    assert_one_clear_line(code, out, err, "no trained model", "charnn train")
    code, out, err = call(["eval", "--json"], capfd)
    assert_one_clear_line(code, out, err, "no trained model")


def test_bad_eval_input(workdir, bad_files, monkeypatch, capfd):
    monkeypatch.chdir(bad_files)
    code, out, err = call(["eval", workdir["run"], "missing.txt", "--json"], capfd)
    assert_one_clear_line(code, out, err, "missing.txt")
    code, out, err = call(["eval", "foreign.pt", "good.txt"], capfd)
    assert_one_clear_line(code, out, err, "foreign.pt")
    code, out, err = call(["eval", workdir["run"], "empty.txt"], capfd)
    assert_one_clear_line(code, out, err, "empty")
