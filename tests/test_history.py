"""Reading runs back: `charnn runs`, `charnn info` and `charnn plot`, and the library functions under them.

One tiny run is trained once (about a second); the other runs are written by hand, as a crash or a
copy would leave them."""

import json
import math
import os
import re
import shutil
import struct
import sys
from datetime import datetime

import pytest
import torch

from charnn import list_runs, loss_curves, read_metrics, start_training, summarize_run
from charnn.cli import main
from charnn.printable import printable_chars

from conftest import SHAKESPEARE, tiny_train_config

RUN_KEYS = {"name", "path", "corpus", "cell", "num_layers", "hidden_size", "vocab_size", "parameters", "steps",
            "epochs", "elapsed", "best_val_loss", "best_val_bpc", "last_train_loss", "updated", "latest", "status",
            "checkpoints", "problems"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (30 steps, evaluations at 15 and 30) under its own runs root."""
    root = tmp_path_factory.mktemp("history")
    corpus = root / "corpus.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:20_000])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHARNN_RUNS_DIR", str(root / "runs"))
        model = dict(num_layers=1, hidden_size=32, embed_size=16, dropout=0.0)
        trainer = start_training([str(corpus)], model, tiny_train_config(max_steps=30, eval_every=15, log_every=5),
                                 out=root / "runs" / "tiny")
        trainer.run()
    return root / "runs" / "tiny"


@pytest.fixture
def runs(trained, tmp_path, monkeypatch):
    """A runs root holding the trained run (the latest), a half-written one and an older, empty one."""
    root = tmp_path / "runs"
    shutil.copytree(trained.parent, root, ignore=shutil.ignore_patterns(".cache"))
    (root / "latest").write_text(str((root / "tiny").resolve()) + "\n")
    half = root / "half"  # killed early: config.json, a metrics line cut short, no checkpoint yet
    half.mkdir()
    shutil.copy(trained / "config.json", half / "config.json")
    lines = (trained / "metrics.jsonl").read_text().splitlines(keepends=True)
    (half / "metrics.jsonl").write_text("".join(lines[:2]) + lines[2][:40])
    old = root / "old"
    old.mkdir()
    (old / "config.json").write_text("{not json")
    for age, name in ((3000, "old"), (2000, "tiny"), (1000, "half")):
        for file in (root / name).iterdir():
            os.utime(file, (1.7e9 - age, 1.7e9 - age))
    monkeypatch.setenv("CHARNN_RUNS_DIR", str(root))
    return root


def call(argv, capfd):
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_clear_line(code, out, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and out == "" and len(lines) == 1 and lines[0].startswith("charnn: error: "), err
    assert "Traceback" not in err and all(n in lines[0] for n in needles), (needles, lines[0])


def eval_records(run):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "eval"]


# --- the library ------------------------------------------------------------------------------


def test_read_metrics_skips_a_line_cut_short(trained, tmp_path):
    text = (trained / "metrics.jsonl").read_text()
    path = tmp_path / "metrics.jsonl"
    path.write_text(text + '{"kind": "train", "step": 35, "lo')
    metrics = read_metrics(path)
    assert metrics.damaged_lines == 1 and metrics.steps == 30
    assert [r["step"] for r in metrics.evals] == [15, 30] and len(metrics.train) == 6
    tail = read_metrics(path, tail_bytes=300)  # starts mid-line: that fragment is not counted as damage
    assert tail.partial and tail.damaged_lines == 1 and tail.last_eval == metrics.last_eval
    assert read_metrics(tmp_path / "missing.jsonl").steps == 0


def test_summaries_come_from_config_and_metrics_without_loading_checkpoints(runs, monkeypatch):
    def refuse(path):
        raise AssertionError(f"loaded {path}")

    monkeypatch.setattr("charnn.model.checkpoint.load_checkpoint", refuse)
    tiny = summarize_run(runs / "tiny")
    assert (tiny.size, tiny.steps, tiny.status, tiny.checkpoints) == ("1x32 LSTM", 30, "finished", ["last.pt", "best.pt"])
    assert tiny.corpus == "corpus" and tiny.best_val_loss == eval_records(runs / "tiny")[-1]["best_val_loss"]


def test_a_run_with_only_a_checkpoint_is_summarised_from_it(trained, tmp_path):
    (tmp_path / "copied").mkdir()
    shutil.copy(trained / "best.pt", tmp_path / "copied" / "best.pt")
    summary = summarize_run(tmp_path / "copied")
    assert summary.size == "1x32 LSTM" and summary.parameters == json.loads(
        (trained / "config.json").read_text())["parameters"]
    assert "no config.json" in summary.problems and summary.status == "unfinished"


def test_loss_curves_against_steps_and_time(trained):
    metrics = read_metrics(trained / "metrics.jsonl")
    by_step = loss_curves(metrics, "step")
    assert by_step.train.xs == [5, 10, 15, 20, 25, 30] and by_step.val.xs == [15, 30]
    assert by_step.val.ys == [r["val_loss"] for r in metrics.evals]
    by_time = loss_curves(metrics, "time")
    assert by_time.val.xs == [r["elapsed"] for r in metrics.evals] and by_time.train.ys == by_step.train.ys


def test_printable_chars_escapes_what_cannot_be_seen():
    assert printable_chars("\n\t\x1b a\\é\u200b") == "\\n\\t\\x1b a\\\\é\\u200b"
    assert printable_chars(" x", space="␣") == "␣x"


# --- charnn runs ------------------------------------------------------------------------------


def test_runs_json_lists_every_run_newest_first(runs, capfd):
    code, out, err = call(["runs", "--json"], capfd)
    assert code == 0 and err == ""
    listed = json.loads(out)
    assert [r["name"] for r in listed] == ["half", "tiny", "old"]  # newest first
    assert all(set(r) == RUN_KEYS for r in listed)
    half, tiny, old = listed
    best = eval_records(runs / "tiny")[-1]["best_val_loss"]
    assert tiny["latest"] and not half["latest"] and not old["latest"]
    assert (tiny["steps"], tiny["status"], tiny["cell"], tiny["num_layers"], tiny["hidden_size"]) == (
        30, "finished", "lstm", 1, 32)
    assert tiny["best_val_loss"] == best and tiny["best_val_bpc"] == pytest.approx(best / math.log(2))
    assert tiny["path"] == str((runs / "tiny").resolve()) and tiny["problems"] == []
    assert tiny["updated"] == datetime.fromtimestamp(1.7e9 - 2000).astimezone().isoformat(timespec="seconds")
    assert half["status"] == "unfinished" and half["steps"] == 10 and half["checkpoints"] == []
    assert half["problems"] == ["metrics.jsonl: 1 incomplete line skipped", "no checkpoint yet"]
    assert old["cell"] is None and "config.json missing or unreadable" in old["problems"]


def test_runs_table_goes_to_stderr_and_marks_the_latest(runs, capfd):
    code, out, err = call(["runs"], capfd)
    assert code == 0 and out == ""
    assert "* tiny" in err and "1x32 LSTM" in err and "finished" in err
    assert "! half: metrics.jsonl: 1 incomplete line skipped; no checkpoint yet" in err
    code, out, err = call(["runs", runs], capfd)  # the root as an argument
    assert code == 0 and "* tiny" in err
    shutil.copytree(runs / "half", runs.parent / "elsewhere" / "half")
    code, out, err = call(["runs", runs.parent / "elsewhere"], capfd)  # not what sample would use: no *
    assert code == 0 and "  half" in err and "*" not in err


def test_runs_on_an_empty_or_missing_root(tmp_path, capfd):
    (tmp_path / "empty").mkdir()
    code, out, err = call(["runs", tmp_path / "empty", "--json"], capfd)
    assert code == 0 and json.loads(out) == []
    code, out, err = call(["runs", tmp_path / "empty"], capfd)
    assert code == 0 and out == "" and "no runs under" in err and "charnn train" in err
    assert_one_clear_line(*call(["runs", tmp_path / "nowhere"], capfd), "nowhere", "no such directory")


def test_runs_includes_the_latest_run_trained_elsewhere(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("CHARNN_RUNS_DIR", str(tmp_path / "runs"))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "latest").write_text(str(trained) + "\n")
    assert [(s.name, s.latest) for s in list_runs()] == [("tiny", True)]


# --- charnn info ------------------------------------------------------------------------------


def test_info_json_on_a_run(runs, capfd):
    code, out, err = call(["info", "--json"], capfd)  # the newest run
    assert code == 0 and err == ""
    info = json.loads(out)
    assert info["kind"] == "run" and info["path"] == str((runs / "tiny").resolve()) and info["latest"]
    assert info["model"]["hidden_size"] == 32 and info["train"]["max_steps"] == 30
    vocab = info["vocab"]
    assert vocab["mode"] == "char" and vocab["size"] == len(vocab["chars"]) == info["model"]["vocab_size"]
    assert vocab["printable"].startswith("\\n ") and info["corpus"]["bytes"] == 20_000
    metrics = info["metrics"]
    assert (metrics["steps"], metrics["evaluations"], metrics["best_step"]) == (30, 2, 30)
    assert metrics["best_val_bpc"] == pytest.approx(metrics["best_val_loss"] / math.log(2))
    checkpoints = {c["file"]: c for c in info["checkpoints"]}
    assert set(checkpoints) == {"last.pt", "best.pt"}
    assert checkpoints["last.pt"]["step"] == 30 and checkpoints["last.pt"]["resumable"]
    assert checkpoints["best.pt"]["resumable"] is False and checkpoints["best.pt"]["val_loss"] == metrics["best_val_loss"]
    assert checkpoints["last.pt"]["bytes"] == (runs / "tiny" / "last.pt").stat().st_size


def test_info_on_a_bare_checkpoint_and_as_a_table(runs, tmp_path, capfd):
    shutil.copy(runs / "tiny" / "best.pt", tmp_path / "copy.pt")
    code, out, err = call(["info", tmp_path / "copy.pt", "--json"], capfd)
    info = json.loads(out)
    assert code == 0 and info["kind"] == "checkpoint" and info["metrics"]["steps"] == 30
    assert info["model"]["hidden_size"] == 32 and info["corpus"]["bytes"] == 20_000
    assert [c["file"] for c in info["checkpoints"]] == ["copy.pt"]
    code, out, err = call(["info", runs / "tiny"], capfd)
    assert code == 0 and out == ""
    for needle in ("1x32 LSTM", "vocabulary", "\\n␣", "sha256:", "best validation", "last.pt", "resumable"):
        assert needle in err, needle


def test_info_errors_are_one_clear_line(runs, tmp_path, capfd):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "plain").mkdir()
    assert_one_clear_line(*call(["info", tmp_path / "missing"], capfd), "missing", "no such")
    assert_one_clear_line(*call(["info", tmp_path / "foreign.pt"], capfd), "foreign.pt", "not a charnn checkpoint")
    assert_one_clear_line(*call(["info", tmp_path / "notes.txt"], capfd), "notes.txt", "not a checkpoint")
    assert_one_clear_line(*call(["info", tmp_path / "plain"], capfd), "plain", "not a run directory")


# --- charnn plot ------------------------------------------------------------------------------


def test_plot_draws_both_curves_with_axes_and_legend(runs, capfd):
    code, out, err = call(["plot", "--width", "90", "--height", "20"], capfd)
    assert code == 0 and out == ""
    lines = err.splitlines()
    assert lines[0] == "charnn plot: tiny (1x32 LSTM, corpus)"
    assert lines[1].startswith("nats/char") and lines[1].endswith("bits/char")
    plot_rows = [line for line in lines if re.match(r"^\s*[\d.]*\s[┤│]", line)]
    assert len(plot_rows) == 20 - 6 and all(len(line) == 90 for line in plot_rows)
    labels = [float(line.split("┤")[0]) for line in plot_rows if "┤" in line]
    assert len(labels) >= 3 and labels == sorted(labels, reverse=True)
    canvas = "".join(re.match(r"^[^┤│]*[┤│](.*)[├│][^├│]*$", line).group(1) for line in plot_rows)
    assert sum("⠁" <= c <= "⣿" for c in canvas) >= 20  # the train line, in braille dots
    assert canvas.count("●") == 2  # one marker per evaluation
    axis = next(line for line in lines if "└" in line)
    assert axis.count("┬") >= 3 and re.search(r"\b0\b.*\b10\b.*\b20\b", lines[lines.index(axis) + 1])
    assert lines[lines.index(axis) + 2].strip() == "step"
    assert "train loss" in lines[-1] and "validation loss" in lines[-1] and "at step 30" in lines[-1]


def test_plot_against_time_and_colour_rules(runs, capfd, monkeypatch):
    code, out, err = call(["plot", runs / "tiny", "--x", "time", "--width", "80", "--height", "16"], capfd)
    assert code == 0 and "0:00" in err and "training time (m:ss)" in err
    monkeypatch.setenv("FORCE_COLOR", "1")
    code, out, err = call(["plot", "--width", "80", "--height", "16"], capfd)
    assert "\x1b[" in err and re.search(r"\x1b\[[\d;]*(3[0-7]|9[0-7]|38;[25]);?", err)
    monkeypatch.setenv("NO_COLOR", "1")
    code, out, err = call(["plot", "--width", "80", "--height", "16"], capfd)
    assert code == 0 and not re.search(r"\x1b\[[\d;]*(3[0-7]|9[0-7]|38;[25])", err)


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_png_is_a_real_picture_of_the_asked_size(runs, tmp_path, capfd):
    pytest.importorskip("matplotlib")
    from PIL import Image

    code, out, err = call(["plot", "--png", tmp_path / "loss.png", "--png-size", "640x400"], capfd)
    assert code == 0 and out == "" and "wrote" in err
    assert png_size(tmp_path / "loss.png") == (640, 400)
    image = Image.open(tmp_path / "loss.png").convert("RGB")
    colours = image.getcolors(maxcolors=1 << 16)
    assert colours is not None and len(colours) > 50  # text, lines and markers, not a blank canvas
    pixels = [rgb for _, rgb in colours]
    assert any(b > 150 and r < 80 for r, g, b in pixels)  # the train line (matplotlib blue)
    assert any(r > 220 and 100 < g < 160 and b < 60 for r, g, b in pixels)  # the validation line (orange)


def test_plot_errors_are_one_clear_line(runs, tmp_path, capfd, monkeypatch):
    (tmp_path / "plain").mkdir()
    assert_one_clear_line(*call(["plot", tmp_path / "missing"], capfd), "missing", "no such run")
    assert_one_clear_line(*call(["plot", tmp_path / "plain"], capfd), "plain", "no metrics.jsonl")
    assert_one_clear_line(*call(["plot", "--png", tmp_path / "x.png", "--png-size", "big"], capfd), "--png-size")
    assert_one_clear_line(*call(["plot", "--width", "10"], capfd), "at least 40 columns")
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    assert_one_clear_line(*call(["plot", "--png", tmp_path / "x.png"], capfd), "pip install 'charnn[plot]'")
    assert not (tmp_path / "x.png").exists()
