"""Pictures of what the model learned: per-character surprise and single units, in the terminal, as
HTML, and drawn by a real browser; and finding the unit that tracks a feature of the text."""

import html
import json
import math
import random
import re
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
import torch

from charnn import (CharRNN, TrainData, Trainer, Vocab, evaluate, find_neurons, hidden_activations, html_page,
                    split_train_val, text_features, trace_text)
from charnn.cli import main
from charnn.evaluate.trace import CharTrace
from charnn.evaluate.render import glyph, surprisal_colour

from conftest import tiny_model_config, tiny_train_config

LN2 = math.log(2)


def quoted_text(spans: int, seed: int) -> str:
    """Lowercase words outside quotes, uppercase inside: to predict a letter's case after a space,
    the model must remember whether a '"' has opened a quote, however far back."""
    rng = random.Random(seed)

    def words(letters: str, low: int, high: int) -> list[str]:
        return ["".join(rng.choice(letters) for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(low, high))]

    return " ".join(" ".join(words("abcdefgh", 1, 4)) + ' "' + " ".join(words("ABCDEFGH", 1, 4)) + '"'
                    for _ in range(spans))


@pytest.fixture(scope="module")
def quotes(tmp_path_factory):
    """A tiny LSTM trained for about two seconds on `quoted_text`, with its run directory."""
    root = tmp_path_factory.mktemp("pictures")
    torch.manual_seed(0)
    text = quoted_text(1000, seed=0)
    vocab = Vocab.from_data(text.encode())
    tokens, _ = vocab.encode_bytes(text.encode())
    config = tiny_train_config(max_steps=120, seq_len=32, val_frac=0.1)
    train, val = split_train_val(tokens, config.val_frac)
    trainer = Trainer(tiny_model_config(vocab.size, hidden_size=16), config, TrainData(vocab, train, val),
                      root / "run")
    trainer.run()
    held_out = root / "held_out.txt"
    held_out.write_text(quoted_text(60, seed=1))
    return {"model": trainer.model.eval(), "vocab": vocab, "val": val, "run": root / "run", "text": held_out}


def call(argv, capfd) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


# --- the library -------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_per_character_losses_and_activations_agree_with_the_model(cell):
    model = CharRNN(tiny_model_config(11, cell=cell, num_layers=2, hidden_size=12)).eval()
    tokens = np.random.default_rng(0).integers(0, 11, size=600).astype(np.uint8)
    trace = trace_text(model, tokens, neuron=(1, 5), window=100)
    assert np.isnan(trace.losses[0]) and not np.isnan(trace.losses[1:]).any()
    assert abs(trace.mean_loss - evaluate(model, tokens, num_streams=1).loss) < 1e-4
    # the best guess for a character is the one the model's own forward pass ranks first
    ids = torch.as_tensor(tokens.astype(np.int64)).view(-1, 1)
    with torch.no_grad():
        logits, _ = model(ids[:-1])
        last_layer, _ = model.rnn(model.embedding(ids))
    assert (trace.top_ids[1:, 0] == logits[:, 0].argmax(-1).numpy()).all()
    assert (np.diff(trace.top_probs[1:], axis=1) <= 0).all() and (trace.top_probs[1:, 0] <= 1).all()
    states = hidden_activations(model, tokens, window=100)  # (layers, N, hidden)
    assert states.shape == (2, 600, 12)
    assert np.allclose(states[1], last_layer[:, 0].numpy(), atol=1e-6)
    assert np.allclose(trace.activations, states[1, :, 5])


def test_text_features_on_a_small_example():
    text = 'ab "c (d" e)\n  x(y\n\n"q ) )(z'
    features = text_features(np.array([ord(c) for c in text]))
    digits = {name: "".join(str(int(v) % 10) for v in values) for name, values in features.items()}
    assert digits["inside_quotes"] == "0001111100000000000011111111"  # restarts at the blank line
    assert digits["column"] == "1234567890120123450012345678"  # characters read on the line so far
    assert digits["indentation"] == "0000000000000122220000000000"
    assert digits["inside_parens"] == "0000001111100000111111100011"  # a stray ')' does not go below 0


def test_find_neurons_finds_the_unit_that_tracks_quotes(quotes):
    trained = find_neurons(quotes["model"], quotes["vocab"], quotes["val"])
    torch.manual_seed(0)
    untrained = find_neurons(CharRNN(quotes["model"].config).eval(), quotes["vocab"], quotes["val"])
    best = trained.best["inside_quotes"][0]
    # an untrained unit already reacts to the case of the letter it reads; only a trained one holds the state
    chance = abs(untrained.best["inside_quotes"][0].correlation)
    assert abs(best.correlation) > 0.85 and abs(best.correlation) > chance + 0.25, (best, chance)
    assert trained.constant == ("indentation", "inside_parens") and trained.best["inside_parens"] == []
    again = find_neurons(quotes["model"], quotes["vocab"], quotes["val"])
    assert again == trained  # deterministic


# --- the command line ----------------------------------------------------------------------------


def test_show_colours_the_text_on_stderr_and_keeps_stdout_for_json(quotes, capfd, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLORTERM", "truecolor")
    monkeypatch.delenv("NO_COLOR", raising=False)
    text = 'abc "ABC dEF" gh'  # a lowercase 'd' inside quotes is what the model least expects
    (quotes["text"].parent / "short.txt").write_text(text)
    code, out, err = call(["eval", quotes["run"], quotes["text"].parent / "short.txt", "--show", "--json"], capfd)
    assert code == 0, err
    report = json.loads(out)
    assert {"loss", "bpc", "perplexity", "chars", "unknown_chars", "checkpoint", "sources", "text"} <= report.keys()
    assert "neurons" not in report
    plain = re.sub(r"\x1b\[[0-9;]*m", "", err)
    assert text in plain and "surprisal (bits)" in plain and "characters 1-16 of 16 drawn" in plain
    trace = trace_text(quotes["model"], quotes["vocab"].encode(text))
    d = text.index("d")
    assert trace.bits[d] > 6 and trace.bits[d] == np.nanmax(trace.bits)
    red = "48;2;{};{};{}".format(*surprisal_colour(trace.bits[d]))
    assert re.search(rf"\x1b\[[0-9;]*{red}m d", err) or re.search(rf"\x1b\[[0-9;]*{red}md", err), err


def test_no_color_draws_plain_text(quotes, capfd, monkeypatch):
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("NO_COLOR", "1")
    code, out, err = call(["eval", quotes["run"], quotes["text"], "--neuron", "0:3", "--show-chars", "50"], capfd)
    assert code == 0 and out == ""
    assert "48;2" not in err and "unit 0:3" in err
    assert quotes["text"].read_text()[:50] in err


def test_html_page_is_self_contained_and_escaped(quotes, capfd, tmp_path):
    page_file = tmp_path / "page.html"
    code, out, err = call(["eval", quotes["run"], quotes["text"], "--html", page_file, "--show-chars", "300"], capfd)
    assert code == 0 and out == "" and f"wrote {page_file}" in err and "bits per character" in err
    page = page_file.read_text()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"https?://|<script|<link|<img|src=|@import|url\(", page)
    assert page.count('title="') == 300  # one tooltip per character drawn
    assert "model&#x27;s guesses" in page and "bits" in page
    # text that looks like markup stays text
    vocab = Vocab.from_data(b'x<b>&"\'\n')
    model = CharRNN(tiny_model_config(vocab.size)).eval()
    page = html_page(trace_text(model, vocab.encode('<b>&"x\'\n')), vocab, title="<i>")
    assert set(re.findall(r"<(\w+)", page)) == {"html", "head", "meta", "title", "style", "body", "h1", "div", "strong", "span",
                                                "pre"}
    assert "<title>&lt;i&gt;</title>" in page and ">&lt;</span>" in page and ">&amp;</span>" in page


def test_neuron_colours_by_one_unit_in_html_only(quotes, capfd, tmp_path):
    page_file = tmp_path / "unit.html"
    code, out, err = call(["eval", quotes["run"], quotes["text"], "--neuron", "0:7", "--html", page_file], capfd)
    assert code == 0 and "unit 0:7" not in err  # --html alone: no terminal picture
    page = page_file.read_text()
    assert "unit 0:7 activation" in page and "unit 0:7 = " in page


def test_find_neurons_on_the_command_line(quotes, capfd):
    code, out, err = call(["eval", quotes["run"], quotes["text"], "--find-neurons", "--json"], capfd)
    assert code == 0, err
    neurons = json.loads(out)["neurons"]
    best = neurons["features"]["inside_quotes"][0]
    assert abs(best["correlation"]) > 0.85 and best["neuron"] == f"{best['layer']}:{best['unit']}"
    assert set(neurons["features"]) == {"inside_quotes", "column", "indentation", "inside_parens"}
    assert "inside_quotes" in err and best["neuron"] in err and "never changes" in err


BAD_PICTURE_CASES = [
    (["--neuron", "1:0"], ["--neuron 1:0", "no layer 1", "0..0", "count from 0"]),
    (["--neuron", "0:16"], ["--neuron 0:16", "no unit 16", "0..15"]),
    (["--neuron", "0:-1"], ["no unit -1"]),
    (["--neuron", "3"], ["LAYER:UNIT"]),
    (["--neuron", "a:b"], ["LAYER:UNIT"]),
    (["--show-chars", "-1"], ["--show-chars"]),
    (["--html", "-", "--json"], ["--html -", "--json"]),
    (["--html", "/nonexistent/dir/page.html"], ["--html /nonexistent/dir/page.html", "cannot write"]),
]


@pytest.mark.parametrize("args,needles", BAD_PICTURE_CASES, ids=[" ".join(a) for a, _ in BAD_PICTURE_CASES])
def test_bad_picture_options(quotes, capfd, args, needles):
    code, out, err = call(["eval", quotes["run"], quotes["text"], *args], capfd)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and out == "" and len(lines) == 1 and lines[0].startswith("charnn: error: "), err
    assert "Traceback" not in err and all(needle in lines[0] for needle in needles), (needles, lines[0])


# --- a real browser draws the page -------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium not found: install the Debian package chromium (.ci/run does) to check the HTML pictures")


def run_chromium(page, tmp_path, *args) -> subprocess.CompletedProcess:
    # --no-sandbox: Chromium refuses to run as root (CI containers) with its sandbox on
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args,
               page.as_uri()]
    result = subprocess.run(command, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result


def read_png(path) -> np.ndarray:
    """(height, width, 3) uint8: with pillow if it is installed, else a small decoder for 8-bit RGB(A) PNGs."""
    try:
        from PIL import Image
    except ImportError:
        pass
    else:
        return np.asarray(Image.open(path).convert("RGB"))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, compressed = 8, []
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        position += length + 12
        if kind == b"IHDR":
            width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, (depth, colour_type, interlace)
    channels = 3 if colour_type == 2 else 4
    raw, stride = zlib.decompress(b"".join(compressed)), width * channels
    image, previous = np.zeros((height, stride), dtype=np.uint8), bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):  # unfilter: None, Sub, Up, Average, Paeth
            a = line[x - channels] if x >= channels else 0
            b, c = previous[x], previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        image[y], previous = np.frombuffer(bytes(line), dtype=np.uint8), line
    return image.reshape(height, width, channels)[:, :, :3]


def made_up_trace(vocab: Vocab, text: str, bits=None, activations=None) -> CharTrace:
    tokens = vocab.encode(text).astype(np.int64)
    n = len(tokens)
    losses = np.full(n, 0.01 * LN2, dtype=np.float32) if bits is None else np.asarray(bits, dtype=np.float32) * LN2
    losses[0] = np.nan
    top_ids = np.tile(tokens[:, None], (1, 2))
    top_probs = np.tile(np.array([[0.9, 0.1]], dtype=np.float32), (n, 1))
    neuron = (0, 1) if activations is not None else None
    return CharTrace(tokens, losses, top_ids, top_probs, neuron,
                     None if activations is None else np.asarray(activations, dtype=np.float32))


def bands(mask: np.ndarray, least: int = 10) -> list[tuple[int, int]]:
    """Runs of consecutive screenshot rows with at least `least` pixels in `mask`: [(first, last)]."""
    rows = np.flatnonzero(mask.sum(axis=1) >= least)
    runs = np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if len(rows) else []
    return [(int(r[0]), int(r[-1])) for r in runs]


def test_chromium_draws_surprising_characters_hot_and_the_rest_cold(tmp_path):
    # line 2 is 12 cold characters then 12 hot ones; lines 1 and 3 are cold; line 3 looks like markup
    lines = ["a" * 24, "a" * 12 + "Z" * 12, 'x<b>&"\'</pre>y']
    text = "\n".join(lines) + "\n"
    vocab = Vocab.from_data(text.encode())
    bits = [12.0 if c == "Z" else 0.01 for c in text]
    page = tmp_path / "surprise.html"
    page.write_text(html_page(made_up_trace(vocab, text, bits=bits), vocab, title="surprise"))
    run_chromium(page, tmp_path, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=800,360")
    image = read_png(tmp_path / "shot.png").astype(int)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    hot = (r > 170) & (g < 90) & (b < 90)
    ink = (r < 100) & (g < 100) & (b < 100)
    found = bands(hot)
    assert len(found) == 2, f"only the legend's red end and line 2 should be red, not rows {found}"
    line2 = found[1]
    rows = slice(line2[0], line2[1] + 1)
    hot_x, ink_x = np.flatnonzero(hot[rows].any(0)), np.flatnonzero(ink[rows].any(0))
    # the line starts with the 12 cold 'a's, black on white, and the 12 hot characters follow them
    assert ink_x.min() < hot_x.min() and not hot[rows, : hot_x.min()].any()
    assert 0.85 < (hot_x.max() - hot_x.min()) / (hot_x.min() - ink_x.min()) < 1.15
    below = ink[line2[1] + 1 :]
    line3 = bands(below, least=3)
    assert line3, "line 3 is drawn below line 2"
    rows3 = slice(line2[1] + 1 + line3[0][0], line2[1] + 1 + line3[0][1] + 1)
    background = image[rows3][~ink[rows3]]
    assert background.mean() > 235  # cold: close to white
    # the page's text is all there, as the browser parsed it
    dom = run_chromium(page, tmp_path, "--dump-dom").stdout.decode()
    drawn = html.unescape(re.sub(r"<[^>]+>", "", dom.split('<pre class="text">', 1)[1].split("</pre>\n", 1)[0]))
    assert drawn == "".join(glyph(c) + ("\n" if c == "\n" else "") for c in text)


def test_chromium_draws_activations_blue_to_red(tmp_path):
    text = "a" * 12 + "b" * 12 + "\n"
    vocab = Vocab.from_data(text.encode())
    page = tmp_path / "unit.html"
    page.write_text(html_page(made_up_trace(vocab, text, activations=[-1.0] * 12 + [1.0] * 12 + [0.0]), vocab,
                              title="unit"))
    run_chromium(page, tmp_path, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=800,300")
    image = read_png(tmp_path / "shot.png").astype(int)
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    red = (r > 150) & (g < 70) & (b < 80)
    blue = (b > 140) & (r < 80) & (g < 130)
    *_, line = bands(red)  # the last red band is the text (the legend's is above it)
    rows = slice(line[0], line[1] + 1)
    blue_x, red_x = np.flatnonzero(blue[rows].any(0)), np.flatnonzero(red[rows].any(0))
    assert len(blue_x) and blue_x.max() < red_x.min()  # -1 first, in blue; then +1, in red
    assert 0.8 < (red_x.max() - red_x.min()) / (blue_x.max() - blue_x.min()) < 1.25
