import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import charnn.data.vocab as vocab_module
from charnn import CharnnError, Vocab
from charnn.data.corpus import Corpus


def test_char_round_trip_with_non_ascii():
    text = "Καλημέρα, wörld! 日本語 🙂\n\ttabs and 'quotes'"
    vocab = Vocab.from_data(text.encode("utf-8"))
    assert list(vocab.chars) == sorted(set(text))
    ids, unknown = vocab.encode_bytes(text.encode("utf-8"))
    assert unknown == 0
    assert len(ids) == len(text)
    assert vocab.decode(ids) == text
    assert vocab.decode_bytes(ids) == text.encode("utf-8")
    assert np.array_equal(vocab.encode(text), ids)
    assert b"".join(vocab.token_bytes(int(i)) for i in ids) == text.encode("utf-8")  # what `sample` prints


def test_byte_round_trip_accepts_anything():
    data = bytes(range(256)) + b"\xff\xfe invalid \xc3("
    vocab = Vocab.from_data(data, mode="byte")
    assert vocab.size == 256
    ids, unknown = vocab.encode_bytes(data)
    assert unknown == 0 and ids.dtype == np.uint8
    assert vocab.decode_bytes(ids) == data
    assert b"".join(vocab.token_bytes(int(i)) for i in ids) == data


def test_smallest_dtype_that_fits():
    assert Vocab.from_data(b"abc").dtype == np.uint8
    wide = "".join(chr(0x4E00 + i) for i in range(300))
    assert Vocab.from_data(wide.encode("utf-8")).dtype == np.uint16


def test_characters_split_across_chunks(monkeypatch):
    """Encoding works in chunks; a multi-byte character cut by a chunk boundary must survive."""
    monkeypatch.setattr(vocab_module, "_CHUNK_BYTES", 7)
    text = "ééé 日本語 🙂🙂 abc" * 5
    data = text.encode("utf-8")
    vocab = Vocab.from_data(data)
    ids, _ = vocab.encode_bytes(data)
    assert vocab.decode(ids) == text


def test_invalid_utf8_names_the_file_and_suggests_bytes(monkeypatch):
    monkeypatch.setattr(vocab_module, "_CHUNK_BYTES", 4)
    good, bad = b"hello world\n", b"ab\xffcd"
    corpus = Corpus(data=good + bad, sources=("good.txt", "bad.txt"), offsets=(0, len(good)))
    with pytest.raises(CharnnError) as err:
        Vocab.from_data(corpus.data, describe_offset=corpus.describe_offset)
    assert "bad.txt: byte 2" in str(err.value)
    assert "--bytes" in str(err.value)


def test_unknown_characters_error_or_drop():
    vocab = Vocab.from_data(b"abc")
    with pytest.raises(CharnnError, match="'z'"):
        vocab.encode("abz")
    assert vocab.decode(vocab.encode("abzq", unknown="drop")) == "ab"
    ids, unknown = vocab.encode_bytes("a€b".encode("utf-8"))
    assert unknown == 1 and vocab.decode(ids) == "ab"


def test_dict_round_trip():
    vocab = Vocab.from_data("xyz é".encode("utf-8"))
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    assert Vocab.from_dict(Vocab.byte_level().to_dict()).size == 256


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1))
def test_any_unicode_text_round_trips(text):
    data = text.encode("utf-8", "surrogatepass")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:  # lone surrogates are not UTF-8: character mode refuses them
        with pytest.raises(CharnnError):
            Vocab.from_data(data)
        return
    vocab = Vocab.from_data(data)
    ids, unknown = vocab.encode_bytes(data)
    assert unknown == 0 and vocab.decode(ids) == text


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1))
def test_any_bytes_round_trip_in_byte_mode(data):
    vocab = Vocab.from_data(data, mode="byte")
    ids, _ = vocab.encode_bytes(data)
    assert vocab.decode_bytes(ids) == data
