"""Big-corpus plumbing: streamed encoding, the token cache, memory-mapped tokens, capped evaluation."""

import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import charnn.data.vocab as vocab_module
from charnn import CharnnError, Vocab, read_corpus, start_training
from charnn.data.corpus import corpus_files
from charnn.runs.rundir import runs_root
from charnn.data.tokens import CACHE_DIR, encode_cached, encode_files, encode_to_file

from conftest import tiny_train_config

TEXT = "Καλημέρα, wörld! 日本語 🙂\n" * 40 + "plain ascii text, lines of it\n" * 200


def chunked(data: bytes, size: int):
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 10_000])
def test_streamed_scan_and_encoding_match_the_whole_text(size):
    data = TEXT.encode("utf-8")
    whole = Vocab.from_data(data)
    vocab, count = Vocab.scan(chunked(data, size))
    assert vocab == whole and count == len(TEXT)
    ids = np.concatenate([ids for ids, _ in vocab.encode_chunks(chunked(data, size))])
    assert vocab.decode(ids) == TEXT


def test_ascii_and_non_ascii_pieces_mix_when_chunks_are_tiny(monkeypatch):
    monkeypatch.setattr(vocab_module, "_CHUNK_BYTES", 3)  # pieces within a chunk, too
    data = ("abc" + "é" * 3 + "xyz🙂").encode("utf-8") * 7
    vocab, count = Vocab.scan(chunked(data, 5))
    ids = np.concatenate([ids for ids, _ in vocab.encode_chunks(chunked(data, 5))])
    assert vocab.decode(ids) == data.decode("utf-8") and count == len(ids)


def test_a_character_cut_off_at_the_very_end_is_invalid_utf8():
    with pytest.raises(CharnnError, match=r"byte 3: not valid UTF-8"):
        Vocab.scan(chunked(b"abc\xc3", 2))


def test_invalid_utf8_in_the_second_file_is_located_there(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x" * 100)
    (tmp_path / "b.txt").write_bytes(b"hello \xff")
    with corpus_files([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]) as corpus:
        with pytest.raises(CharnnError, match=r"b\.txt: byte 6: not valid UTF-8"):
            encode_to_file(corpus, tmp_path / "out.npy")


def test_encoded_file_is_a_memory_mapped_npy_equal_to_in_memory_encoding(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    encoded = encode_files([str(path)], tmp_path / "tokens.npy")
    tokens = encoded.tokens()
    assert isinstance(tokens, np.memmap)
    vocab = Vocab.from_data(path.read_bytes())
    expected, _ = vocab.encode_bytes(path.read_bytes())
    assert encoded.vocab == vocab and tokens.dtype == expected.dtype
    assert np.array_equal(np.load(tmp_path / "tokens.npy"), expected)
    assert encoded.fingerprint == read_corpus([str(path)]).fingerprint


def test_the_cache_is_reused_until_the_corpus_changes(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abc\n" * 500, encoding="utf-8")
    cache_root = tmp_path / "runs"
    with corpus_files([str(path)]) as corpus:
        first = encode_cached(corpus, "char", cache_root)
    with corpus_files([str(path)]) as corpus:
        second = encode_cached(corpus, "char", cache_root)
    assert not first.cached and second.cached and second.path == first.path
    with open(path, "a", encoding="utf-8") as f:
        f.write("xyz\n")  # new size and modification time: the entry is stale
    with corpus_files([str(path)]) as corpus:
        third = encode_cached(corpus, "char", cache_root)
    assert not third.cached and third.num_tokens == 2004 and "z" in third.vocab.chars
    with corpus_files([str(path)]) as corpus:
        assert encode_cached(corpus, "char", cache_root).cached
    with corpus_files([str(path)]) as corpus:  # the byte-level encoding is another entry
        assert not encode_cached(corpus, "byte", cache_root).cached
    leftovers = [p.name for p in (cache_root / CACHE_DIR).iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_a_damaged_cache_entry_is_rebuilt(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("hello world\n" * 100, encoding="utf-8")
    with corpus_files([str(path)]) as corpus:
        first = encode_cached(corpus, "char", tmp_path)
    first.path.write_bytes(b"garbage")
    with corpus_files([str(path)]) as corpus:
        again = encode_cached(corpus, "char", tmp_path)
    assert not again.cached and len(again.tokens()) == 1200


def test_runs_keep_their_own_tokens_when_the_corpus_changes(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox\n" * 300, encoding="utf-8")
    model = dict(num_layers=1, hidden_size=16, embed_size=8, dropout=0.0)
    first = start_training([str(path)], model, tiny_train_config(max_steps=1), out=tmp_path / "one")
    before = np.load(first.trainer.run_dir / "tokens.npy").copy()
    cache_files = list((runs_root() / CACHE_DIR).glob("*.npy"))
    assert len(cache_files) == 1 and os.path.samefile(cache_files[0], first.trainer.run_dir / "tokens.npy")
    path.write_text("a different text entirely\n" * 300, encoding="utf-8")
    second = start_training([str(path)], model, tiny_train_config(max_steps=1), out=tmp_path / "two")
    assert np.array_equal(np.load(first.trainer.run_dir / "tokens.npy"), before)
    assert not np.array_equal(np.load(second.trainer.run_dir / "tokens.npy")[: len(before)], before)


def test_training_reads_memory_mapped_tokens_and_stdin_leaves_no_temporary_files(tmp_path):
    model = dict(num_layers=1, hidden_size=16, embed_size=8, dropout=0.0)
    stdin = io.BytesIO(("to be or not to be\n" * 300).encode())
    trainer = start_training(["-"], model, tiny_train_config(max_steps=2), out=tmp_path / "run", stdin=stdin)
    mapped = Path("/proc/self/maps").read_text()
    assert str((tmp_path / "run" / "tokens.npy").resolve()) in mapped  # training reads the file, not a copy
    trainer.run()
    assert (tmp_path / "run" / "tokens.npy").is_file()
    cache = runs_root() / CACHE_DIR
    assert [p.name for p in cache.iterdir()] == []  # stdin is never cached, its copies are gone


def test_a_pipe_is_read_like_a_file(tmp_path):
    """bash's `charnn train <(zcat corpus.gz)` hands over a pipe that can be read only once."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    text = "streamed through a pipe\n" * 200
    writer = threading.Thread(target=lambda: fifo.write_text(text, encoding="utf-8"))
    writer.start()
    encoded = encode_files([str(fifo)], tmp_path / "tokens.npy")
    writer.join()
    assert encoded.vocab.decode(encoded.tokens()) == text


def test_evaluation_scores_at_most_eval_chars(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("abcdefghij\n" * 2000, encoding="utf-8")
    model = dict(num_layers=1, hidden_size=16, embed_size=8, dropout=0.0)
    trainer = start_training([str(path)], model, tiny_train_config(max_steps=2, eval_chars=500),
                             out=tmp_path / "run")
    trainer.run()
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_chars"] for r in evals if r["kind"] == "eval"] == [500]
    with pytest.raises(CharnnError, match="--eval-chars"):
        tiny_train_config(eval_chars=1).validate()


def test_a_vocabulary_wider_than_a_byte_trains_from_its_mapped_file(tmp_path):
    path = tmp_path / "wide.txt"
    rng = np.random.default_rng(0)
    path.write_text("".join(chr(0x4E00 + int(i)) for i in rng.integers(0, 300, 6000)), encoding="utf-8")
    model = dict(num_layers=1, hidden_size=16, embed_size=8, dropout=0.0)
    trainer = start_training([str(path)], model, tiny_train_config(max_steps=3), out=tmp_path / "run")
    assert np.load(tmp_path / "run" / "tokens.npy").dtype == np.uint16
    result = trainer.run()
    assert result.state.step == 3 and np.isfinite(result.last_eval["val_loss"])
