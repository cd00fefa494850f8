"""`charnn sample` beyond plain temperature sampling, end to end: stop strings, beam search, min-p and
the repetition penalty, the interactive mode through a real pseudo-terminal, and the training options
that shape records and watch the run."""

import json

import pytest

from charnn import SamplingConfig, TextGenerator, load_model
from charnn.cli import main

from conftest import TINY, Terminal, run_cli


def call(argv, capfd) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def test_stop_ends_each_sample_at_the_string_without_printing_it(workdir):
    full = run_cli("sample", workdir["run"], "-n", "400", "--seed", "4", "--prime", "A").stdout.decode()
    assert "e" in full[1:]
    result = run_cli("sample", workdir["run"], "-n", "400", "--seed", "4", "--prime", "A", "--stop", "e")
    assert result.returncode == 0 and result.stderr == b""
    assert result.stdout.decode() == full[: full.index("e", 1)]  # the same text, cut before the stop string
    many = run_cli("sample", workdir["run"], "-n", "400", "--seed", "4", "--num-samples", "4", "--prime", "A",
                   "--stop", "\\n", "--separator", "\\0")
    samples = many.stdout.decode().split("\0")
    assert samples.pop() == ""  # a NUL ends the last sample too
    assert len(samples) == 4 and all(s.startswith("A") and "\n" not in s for s in samples)
    assert len({len(s) for s in samples}) > 1  # each one stopped at its own place


def test_beam_search_is_deterministic_and_checks_its_options(workdir, capfd):
    first = run_cli("sample", workdir["run"], "-n", "60", "--beam", "4", "--prime", "The ")
    second = run_cli("sample", workdir["run"], "-n", "60", "--beam", "4", "--prime", "The ", "--seed", "99")
    assert first.returncode == 0 and first.stdout == second.stdout and len(first.stdout.decode()) == 64
    for extra, needle in ((["--temp", "0.5"], "--temp"), (["--top-k", "3"], "--top-k"),
                          (["--num-samples", "2"], "--num-samples"), (["--beam", "0"], "at least 1")):
        code, out, err = call(["sample", workdir["run"], "--beam", "4", *extra], capfd)
        assert code == 1 and out == "" and needle in err and "Traceback" not in err


def test_min_p_and_repetition_penalty_from_the_command_line(workdir, capfd):
    result = run_cli("sample", workdir["run"], "-n", "200", "--seed", "1", "--min-p", "0.2", "--temp", "0.8",
                     "--repetition-penalty", "1.3", "--repetition-window", "16", "--no-prime-echo", "-p", "A")
    assert result.returncode == 0 and len(result.stdout.decode()) == 200
    for bad, needle in ((["--min-p", "2"], "--min-p"), (["--repetition-penalty", "0"], "--repetition-penalty"),
                        (["--repetition-window", "-1"], "--repetition-window")):
        code, out, err = call(["sample", workdir["run"], *bad], capfd)
        assert code == 1 and out == "" and needle in err


# --- interactive, through a pseudo-terminal ----------------------------------------------------


def test_interactive_keeps_the_state_between_turns_and_resets_on_request(workdir):
    run = workdir["run"]
    terminal = Terminal(["sample", run, "--interactive", "-n", "40", "--seed", "3"], workdir["env"])
    try:
        terminal.read_until(b"> ")
        shown = []
        for line in (b"ROMEO:", b"Hark", b"/reset", b"JULIET"):
            terminal.type(line + b"\n")
            shown.append(terminal.read_until(b"> "))
        terminal.type(b"\x04")  # Ctrl-D ends it
        assert terminal.close() == 0
    finally:
        terminal.process.kill()
    # the same turns through the library: one generator, its state carried along, reset once
    model, vocab = load_model(run)
    generator = TextGenerator(model, SamplingConfig(), seed=3)
    expected = []
    for text in ("ROMEO:", "Hark", None, "JULIET"):
        if text is None:
            generator.reset()
            continue
        generator.feed(vocab.encode(text))
        expected.append(vocab.decode([int(i[0]) for i in generator.sample(40)]))
    assert expected[0] in shown[0].decode() and expected[1] in shown[1].decode()
    assert b"context forgotten" in shown[2] and expected[2] in shown[3].decode()
    # carrying the state matters: a fresh generator continues "Hark" differently
    fresh = TextGenerator(model, SamplingConfig(), seed=3)
    fresh.feed(vocab.encode("Hark"))
    assert vocab.decode([int(i[0]) for i in fresh.sample(40)]) != expected[1]


# --- training options ----------------------------------------------------------------------------


def test_train_with_records_patience_and_samples(tmp_path):
    corpus = tmp_path / "records.txt"
    corpus.write_text("".join(f"{k}:{k * (3 + i % 5)}.\n" for i, k in enumerate("abcdabdcbadc" * 200)))
    result = run_cli("train", corpus, *TINY, "--reset-on", "\\n", "--patience", "50", "--sample-every", "20",
                     "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"" and b"sample at step 20:" in result.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert len(config["model"]["reset_ids"]) == 1 and config["train"]["patience"] == 50
    sampled = run_cli("sample", tmp_path / "run", "-n", "100", "--seed", "0", "--stop", "\\n")
    assert sampled.returncode == 0 and "\n" not in sampled.stdout.decode()
    bad = run_cli("train", corpus, *TINY, "--reset-on", "%%", "--out", tmp_path / "bad")
    assert bad.returncode == 1 and b"--reset-on" in bad.stderr and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("flag", ["--patience", "--sample-every"])
def test_watch_options_must_be_positive(tmp_path, capfd, flag):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc" * 1000)
    code, out, err = call(["train", corpus, flag, "0", "--out", tmp_path / "run"], capfd)
    assert code == 1 and flag in err and not (tmp_path / "run").exists()
