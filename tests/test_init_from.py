"""`charnn train --init-from`: a run that starts from another model's weights keeps its shape, reads the
union of the two vocabularies (trained rows kept, fresh rows for new characters), starts with what the
base knew, and refuses in one line what cannot work, touching nothing."""

import json

import numpy as np
import pytest
import torch

from charnn.plan.pretrained import id_map, remap_tokens, starting_state, union_vocab
from charnn.errors import CharnnError
from charnn.data.vocab import Vocab
from charnn.model.weights import Weights, read_weights
from conftest import TINY, run_cli
from test_errors import assert_refused, attempt, trained, world  # noqa: F401 (fixtures)


def test_the_union_keeps_every_character_sorted_and_maps_the_old_ids():
    base, corpus = Vocab(chars="\n abc"), Vocab(chars="\n acd{}")
    union = union_vocab(base, corpus)
    assert union.chars == "\n abcd{}"
    assert [union.chars[i] for i in id_map(base, union)] == list(base.chars)
    assert union_vocab(Vocab.byte_level(), Vocab.byte_level()) == Vocab.byte_level()
    with pytest.raises(CharnnError, match="the model reads chars and the corpus was read as bytes"):
        union_vocab(base, Vocab.byte_level())


def test_tokens_are_rewritten_for_the_union(tmp_path):
    corpus = Vocab(chars="ab{")
    union = Vocab(chars="\nab{z")
    tokens = np.array([0, 2, 1, 1, 0], dtype=np.uint8)
    remap_tokens(tokens, corpus, union, tmp_path / "t.npy", chunk=2)
    assert union.decode(np.load(tmp_path / "t.npy")) == corpus.decode(tokens) == "a{bba"


def test_known_characters_keep_their_rows_and_new_ones_get_fresh_rows():
    base_vocab, vocab = Vocab(chars="ab"), Vocab(chars="abc")
    arrays = {"embedding.weight": np.array([[1.0, 1.0], [2.0, 2.0]], np.float32),
              "head.weight": np.array([[3.0, 3.0], [4.0, 4.0]], np.float32),
              "head.bias": np.array([5.0, 6.0], np.float32), "rnn.weight_hh_l0": np.ones((8, 2), np.float32)}
    fresh = {"embedding.weight": np.full((3, 2), 9.0, np.float32), "head.weight": np.full((3, 2), 8.0, np.float32),
             "head.bias": np.full(3, 7.0, np.float32), "rnn.weight_hh_l0": np.zeros((8, 2), np.float32)}
    state = starting_state(Weights(None, base_vocab, arrays), vocab, fresh)
    assert state["embedding.weight"].tolist() == [[1, 1], [2, 2], [9, 9]]
    assert state["head.weight"].tolist() == [[3, 3], [4, 4], [8, 8]]
    assert state["head.bias"].tolist() == [5, 6, 7]
    assert state["rnn.weight_hh_l0"].tolist() == arrays["rnn.weight_hh_l0"].tolist()  # the rest is the base's


SENTENCE = "the quick brown fox jumps over the lazy dog. "


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A small model that has learned a sentence."""
    root = tmp_path_factory.mktemp("base")
    (root / "base.txt").write_text((SENTENCE + "\n") * 400)
    result = run_cli("train", root / "base.txt", *TINY[:1], "200", *TINY[2:], "--lr", "1e-2", "--out", root / "run",
                     env={"CHARNN_RUNS_DIR": str(root / "runs")})
    assert result.returncode == 0, result.stderr.decode()
    return root


def first_eval(run) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return next(r["val_loss"] for r in records if r["kind"] == "eval")


def test_a_run_from_a_model_starts_with_what_it_knew_and_learns_its_new_characters(base, tmp_path):
    corpus = tmp_path / "more.txt"
    corpus.write_text("".join(f"{SENTENCE}{i % 10}\n" for i in range(400)))  # digits: new characters
    options = ["--max-steps", "15", "--eval-every", "15", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
               "--precision", "fp32"]
    tuned = run_cli("train", corpus, *options, "--init-from", base / "run", "--out", tmp_path / "tuned")
    assert tuned.returncode == 0, tuned.stderr.decode()
    scratch = run_cli("train", corpus, *options, "--layers", "1", "--hidden-size", "32", "--out", tmp_path / "scratch")
    assert scratch.returncode == 0, scratch.stderr.decode()
    assert first_eval(tmp_path / "tuned") < first_eval(tmp_path / "scratch") - 0.5  # it knew the sentence

    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["init_from"]["source"] == str(base / "run") and config["init_from"]["vocab_added"] == "0123456789"
    assert config["model"]["hidden_size"] == 32 and config["train"]["lr"] == 1e-3  # the base's shape; fine-tuning's lr
    weights = read_weights(tmp_path / "tuned" / "best.safetensors")
    assert weights.vocab.chars == "".join(sorted(set(SENTENCE + "\n0123456789")))
    tokens = np.load(tmp_path / "tuned" / "tokens.npy")
    assert weights.vocab.decode(tokens) == corpus.read_text()  # the corpus, in the union's ids
    sampled = run_cli("sample", tmp_path / "tuned", "-n", "60", "--seed", "1")
    assert sampled.returncode == 0 and len(sampled.stdout.decode()) >= 60  # it still starts from nothing given
    shown = run_cli("info", tmp_path / "tuned", "--json")
    assert json.loads(shown.stdout)["init_from"] == config["init_from"]  # `charnn info` says where it started
    table = run_cli("info", tmp_path / "tuned", env={"COLUMNS": "200"}).stderr.decode()
    assert "started from" in table and config["init_from"]["sha256"] in table and "0123456789" in table


def test_a_run_from_a_model_resumes_exactly_like_any_run(base, tmp_path):
    corpus = tmp_path / "more.txt"
    corpus.write_text((SENTENCE + "!\n") * 300)
    options = ["--max-steps", "12", "--eval-every", "6", "--batch-size", "4", "--seq-len", "16", "--device", "cpu",
               "--precision", "fp32", "--save-every", "6", "--schedule", "constant"]  # a budget extended: no cosine
    straight = run_cli("train", corpus, *options, "--init-from", base / "run", "--out", tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr.decode()
    half = run_cli("train", corpus, *options[:1], "6", *options[2:], "--init-from", base / "run",
                   "--out", tmp_path / "resumed")
    assert half.returncode == 0
    assert run_cli("train", "--resume", tmp_path / "resumed", "--max-steps", "12").returncode == 0
    ours, theirs = (torch.load(tmp_path / name / "last.pt", weights_only=True)["model_state"]
                    for name in ("resumed", "straight"))
    assert all(torch.equal(ours[key], theirs[key]) for key in ours)


CASES = {
    "contradicts-the-shape": ("charnn train small.txt --init-from good --hidden-size 64 --max-steps 5",
                              ("--hidden-size 64 contradicts the model's 32",)),
    "size-with-init": ("charnn train small.txt --init-from good --size small --max-steps 5", ("--size does not apply",)),
    "bytes-with-a-char-model": ("charnn train small.txt --init-from good --bytes --max-steps 5",
                                ("reads chars", "as bytes")),
    "not-a-model": ("charnn train small.txt --init-from random.pt --max-steps 5", ("random.pt",)),
    "not-a-run": ("charnn train small.txt --init-from fakehome --max-steps 5", ("not a charnn run",)),
    "nowhere": ("charnn train small.txt --init-from nowhere --max-steps 5", ("no such run directory or file",)),
    "the-run-being-written": ("charnn train small.txt --init-from good --out good --overwrite --max-steps 5",
                              ("the run being written",)),
    "resume-with-init": ("charnn train --resume good --init-from good", ("--init-from does not apply",)),
}


@pytest.mark.parametrize("name", CASES)
def test_what_cannot_start_from_a_model_is_one_line_and_touches_nothing(world, name):  # noqa: F811
    command, needles = CASES[name]
    assert_refused(attempt(world, command), 1, needles)


def test_a_small_corpus_is_told_of_the_base_model_and_the_dry_run_shows_both_plans(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(f"{SENTENCE}\n" * 300)
    env = {"CHARNN_RUNS_DIR": str(tmp_path / "runs")}
    planned = run_cli("train", corpus, "--max-time", "1m", "--dry-run", env=env)
    stderr = planned.stderr.decode()
    assert planned.returncode == 0 and planned.stdout == b"", stderr
    assert "with --init-from english:" in stderr and "2x256 LSTM" in stderr.split("with --init-from english:")[1]
    trained = run_cli("train", corpus, "--max-steps", "10", "--batch-size", "4", "--seq-len", "16",
                      "--precision", "fp32", "--out", tmp_path / "run", env=env)
    assert trained.returncode == 0, trained.stderr.decode()
    said = [line for line in trained.stderr.decode().splitlines() if "--init-from english" in line]
    assert len(said) == 1 and "would likely train better" in said[0]  # one line suggests it


def test_a_shape_of_ones_own_is_planned_alone_and_not_told_of_the_base(tmp_path):
    corpus = tmp_path / "small.txt"
    corpus.write_text(f"{SENTENCE}\n" * 300)
    env = {"CHARNN_RUNS_DIR": str(tmp_path / "runs")}
    for shape in (["--layers", "1"], ["--size", "tiny"]):
        planned = run_cli("train", corpus, *shape, "--max-time", "1m", "--dry-run", env=env)
        assert planned.returncode == 0, planned.stderr.decode()  # the base's plan would refuse the shape given
        assert "--init-from english" not in planned.stderr.decode()
