"""Names and text from files reach the terminal shown, never obeyed (issue 23, item 12).

A corpus file, its text and a run directory all hold what would set the terminal's title, clear the
screen, forge a line and reverse the text after it. Every command that prints them on stderr shows
their escapes instead, in real processes; stdout's data (samples, JSON) keeps every byte."""

import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from charnn.printable import brief, printable, printable_chars
from charnn.evaluate.render import glyph

from conftest import SHAKESPEARE, TINY

# OSC 0 (the window title), ED (clear the screen), CR LF (a forged line), RLO (text reversed), C1 CSI
EVIL = "\x1b]0;pwned\x07\x1b[2J\r\ncharnn: error: forged\u202e\x9b1m"
SHOWN = "\\x1b]0;pwned\\x07\\x1b[2J\\r\\ncharnn: error: forged\\u202e\\x9b1m"


def obeyed(stream: bytes) -> list[str]:
    """What a terminal would act on or hide: every character of stderr but a line's end that
    `str.isprintable` refuses (there are no colours: stderr is not a terminal)."""
    return [c for c in stream.decode("utf-8") if c != "\n" and not c.isprintable()]


def charnn(world, *args, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHARNN_RUNS_DIR": str(world / "runs"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "charnn", *map(str, args)], cwd=world, env=env,
                          capture_output=True, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A run named EVIL, trained (with samples on stderr) on a corpus named EVIL holding EVIL."""
    world = tmp_path_factory.mktemp("terminal")
    corpus = world / f"book{EVIL}.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:8_000] + (EVIL * 200).encode())
    trained = charnn(world, "train", corpus, *TINY, "--sample-every", "15",
                     "--out", world / f"run{EVIL}")
    assert trained.returncode == 0, trained.stderr
    return {"root": world, "run": world / f"run{EVIL}", "train": trained}


def assert_shown(result: subprocess.CompletedProcess, code: int = 0, lines: int | None = None) -> str:
    assert result.returncode == code, result.stderr
    assert obeyed(result.stderr) == [], result.stderr
    err = result.stderr.decode()
    if lines is not None:
        assert len(err.splitlines()) == lines, err
    return err


def test_training_shows_its_run_corpus_and_samples_escaped(world):
    err = assert_shown(world["train"])
    assert f"run directory: {world['run'].parent}/run{SHOWN}" in err
    samples = err.split("sample at step 15:\n", 1)[1]
    assert re.search(r"\\x1b|\\u202e|\\x9b|\\x07", samples), samples  # the model writes what it read, escaped


@pytest.mark.parametrize("command", [["runs"], ["info", "RUN"], ["plot", "RUN", "--height", "12"]])
def test_runs_info_and_plot_show_names_and_sources_escaped(world, command):
    err = assert_shown(charnn(world["root"], *[world["run"] if a == "RUN" else a for a in command]))
    assert f"run{SHOWN}"[:40] in err.replace("\n", "")  # a table may fold the name, never break it with its own newlines


def test_info_shows_the_vocabulary_and_corpus_escaped(world):
    err = assert_shown(charnn(world["root"], "info", world["run"]))
    assert f"book{SHOWN}.txt" in err and "\\x1b" in err.split("characters", 1)[1]


def test_json_and_samples_on_stdout_keep_every_byte(world):
    listed = charnn(world["root"], "runs", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout)[0]["name"] == f"run{EVIL}"
    sampled = charnn(world["root"], "sample", world["run"], "-n", "10", "--prime", EVIL[:9], "--seed", "1")
    assert_shown(sampled, lines=0)
    assert sampled.stdout.startswith(EVIL[:9].encode())


def test_an_error_quoting_a_path_is_one_escaped_line(world):
    err = assert_shown(charnn(world["root"], "info", world["root"] / f"nowhere{EVIL}"), code=1, lines=1)
    assert err.startswith("charnn: error: ") and f"nowhere{SHOWN}" in err


def test_a_note_naming_a_damaged_file_is_escaped(world):
    weights = world["run"] / "best.safetensors"
    kept = weights.read_bytes()
    try:
        weights.write_bytes(kept[:100])
        err = assert_shown(charnn(world["root"], "sample", world["run"], "-n", "5"), lines=1)
    finally:
        weights.write_bytes(kept)
    assert f"run{SHOWN}/best.safetensors" in err and "sampling from best.pt" in err


def test_serve_names_its_models_escaped(world):
    env = {**os.environ, "CHARNN_RUNS_DIR": str(world["root"] / "runs")}
    server = subprocess.Popen([sys.executable, "-m", "charnn", "serve", world["run"], "--port", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = b""
    timer = threading.Timer(60, server.kill)  # bounded, whatever happens
    timer.start()
    try:
        for line in server.stderr:
            err += line
            if b"serving at" in line:
                break
        server.send_signal(signal.SIGTERM)
        err += server.stderr.read()
    finally:
        timer.cancel()
        server.kill()
        server.wait()
    assert obeyed(err) == [], err
    assert f"charnn: model run{SHOWN}: 1x32 LSTM" in err.decode()


def test_one_owner_shows_every_character_a_terminal_would_obey():
    assert printable(EVIL) == SHOWN and printable("é ünï 日本 🙂 a\\b") == "é ünï 日本 🙂 a\\b"
    assert printable("a\nb\tc\x1b", keep="\n") == "a\nb\\tc\\x1b"
    assert printable_chars("\n\t\x1b a\\é\u200b\x9b", space="␣") == "\\n\\t\\x1b␣a\\\\é\\u200b\\x9b"
    assert all(glyph(c).isprintable() for c in EVIL)  # eval --show's heat map draws each character
    assert brief("\x1b[2J") == "'\\x1b[2J'" and brief(10 ** 5000) == "<a 16,610-bit number>"
    nested = [[[[["x" * 10_000]]]]]
    assert len(brief(nested)) < 60 and len(brief({"k" * 1000: 1})) < 60
