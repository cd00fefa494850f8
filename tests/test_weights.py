"""best.safetensors: written with best.pt from the same weights, read without pickle or PyTorch,
written for any checkpoint by `charnn export`, and every damaged or foreign file refused in one line."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import save

from charnn import CharnnError, CharRNN, Vocab, load_checkpoint, read_weights, write_weights
from charnn.model.checkpoint import FORMAT
from charnn.cli import main
from charnn.model.weights import Weights, _checksum, encode_weights
from charnn.runs.locate import weights_for

from conftest import run_cli, tiny_model_config


def call(argv, capfd):
    code = main([str(a) for a in argv])
    out, err = capfd.readouterr()
    return code, out, err


def assert_one_line_naming(code, out, err, path, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("charnn: error: ") and str(path) in lines[0] and "Traceback" not in err, lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def weights():
    torch.manual_seed(0)
    model = CharRNN(tiny_model_config(6, num_layers=2, reset_ids=(5,)))
    arrays = {name: tensor.numpy().copy() for name, tensor in model.state_dict().items()}
    return Weights(model.config, Vocab(chars="\n abcd"), arrays, {"step": 7, "val_loss": 1.25, "train_config": None,
                                                                     "corpus": {"sources": ["x.txt"]}})


def test_training_writes_best_safetensors_from_best_pts_weights(workdir):
    run = workdir["run"]
    best = load_checkpoint(run / "best.pt")
    loaded = read_weights(run / "best.safetensors")
    assert loaded.config.to_dict() == best["model_config"] and loaded.vocab.to_dict() == best["vocab"]
    assert loaded.step == best["step"] and loaded.records["val_loss"] == best["val_loss"]
    assert loaded.records["corpus"] == best["corpus"] and loaded.records["train_config"] == best["train_config"]
    assert set(loaded.arrays) == set(best["model_state"])
    for name, tensor in best["model_state"].items():
        assert loaded.arrays[name].dtype == np.float32 and np.array_equal(loaded.arrays[name], tensor.numpy()), name


def test_the_header_is_the_documented_json(weights, tmp_path):
    write_weights(tmp_path / "w.safetensors", weights)
    found = header((tmp_path / "w.safetensors").read_bytes())
    metadata = found.pop("__metadata__")
    assert metadata["format"] == "charnn-weights" and metadata["format_version"] == "1"
    assert json.loads(metadata["model_config"])["reset_ids"] == [5] and json.loads(metadata["step"]) == 7
    assert json.loads(metadata["vocab"]) == {"mode": "char", "chars": "\n abcd"} and len(metadata["weights_sha256"]) == 64
    assert found["rnn.weight_ih_l0"] == {"dtype": "F32", "shape": [128, 16],
                                         "data_offsets": found["rnn.weight_ih_l0"]["data_offsets"]}
    back = read_weights(tmp_path / "w.safetensors")
    assert back.records == weights.records and back.config == weights.config
    assert all(np.array_equal(back.arrays[n], a) for n, a in weights.arrays.items())


def header(data: bytes) -> dict:
    return json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])


def test_export_writes_what_training_wrote_for_a_run_from_before(workdir, tmp_path, capfd):
    """A run trained before best.safetensors existed: export writes what training writes (the same header
    and tensors; safetensors orders the metadata's keys as it likes)."""
    run = tmp_path / "old"
    shutil.copytree(workdir["run"], run)
    written = (run / "best.safetensors").read_bytes()
    (run / "best.safetensors").unlink()
    code, out, err = call(["export", run], capfd)
    assert code == 0 and out == "" and f"wrote {run / 'best.safetensors'}" in err and "step 30" in err
    exported = (run / "best.safetensors").read_bytes()
    assert header(exported) == header(written) and exported[-1000:] == written[-1000:] and len(exported) == len(written)
    code, out, err = call(["export", run / "last.pt", "-o", tmp_path / "last.safetensors"], capfd)
    assert code == 0 and read_weights(tmp_path / "last.safetensors").step == 30
    result = run_cli("export", run, "-o", "-")
    assert result.returncode == 0 and header(result.stdout) == header(written)


def test_export_refuses_to_overwrite_a_checkpoint(workdir, tmp_path, capfd):
    run = tmp_path / "run"
    shutil.copytree(workdir["run"], run)
    before = (run / "last.pt").read_bytes()
    assert_one_line_naming(*call(["export", run, "-o", run / "last.pt"], capfd), run / "last.pt", "refusing")
    assert_one_line_naming(*call(["export", run, "-o", run / "best.pt"], capfd), run / "best.pt")
    assert_one_line_naming(*call(["export", run, "-o", tmp_path / "nowhere" / "x.safetensors"], capfd), "nowhere")
    assert (run / "last.pt").read_bytes() == before


def test_a_stale_safetensors_file_is_not_sampled(workdir, tmp_path, capfd):
    """best.pt replaced (copied over from another run, or a crash between the two writes): sample notices."""
    run = tmp_path / "run"
    shutil.copytree(workdir["run"], run)
    payload = load_checkpoint(run / "best.pt")
    payload["step"] = 29
    torch.save(payload, run / "best.pt")
    path, note = weights_for(run)
    assert path == run / "best.pt" and "best.safetensors" in note and "step 30 against 29" in note
    code, out, err = call(["sample", run, "-n", "5", "--seed", "0", "--no-prime-echo"], capfd)
    assert code == 0 and len(out) == 5 and "does not hold best.pt's weights" in err and "charnn export" in err


def test_overwriting_a_run_removes_its_old_safetensors(workdir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(workdir["run"], run)
    result = run_cli("train", workdir["corpus"], "--out", run, "--overwrite", "--max-steps", "2", "--eval-every",
                     "100", "--layers", "1", "--hidden-size", "8", "--device", "cpu", "-q")
    assert result.returncode == 0, result.stderr.decode()
    assert not (run / "best.safetensors").exists() or read_weights(run / "best.safetensors").config.hidden_size == 8


# --- bad files: one line naming the file, exit 1, nothing executed ---------------------------------


def damaged_files(tmp_path, weights) -> dict:
    good = encode_weights(weights)
    header_length = int.from_bytes(good[:8], "little")
    metadata = json.loads(good[8 : 8 + header_length])["__metadata__"]

    def remade(arrays=None, **changes):
        return save(dict(weights.arrays if arrays is None else arrays), metadata={**metadata, **changes})

    wrong_shape = {**weights.arrays, "head.weight": np.zeros((6, 31), np.float32)}
    missing = {k: v for k, v in weights.arrays.items() if k != "rnn.bias_hh_l1"}
    extra = {**weights.arrays, "rnn.weight_ih_l2": np.zeros((128, 32), np.float32)}
    non_finite = {**weights.arrays, "head.bias": np.full(6, np.nan, np.float32)}
    flipped = bytearray(good)
    flipped[-3] ^= 0x40
    return {
        "empty.safetensors": (b"", ["empty"]),
        "truncated.safetensors": (good[: len(good) - 100], ["damaged or truncated"]),
        "header.safetensors": (good.replace(b'"dtype"', b'"dtyp#"', 1), ["damaged or truncated"]),
        "incomplete.safetensors": (save(weights.arrays, {k: v for k, v in metadata.items() if k != "vocab"}),
                                   ["metadata is incomplete (no vocab)"]),
        "text.safetensors": (b"just some words, no weights\n", ["not a readable safetensors file"]),
        "flipped.safetensors": (bytes(flipped), ["damaged", "checksum"]),
        "foreign.safetensors": (save(weights.arrays), ["not a charnn weights file"]),
        "newer.safetensors": (remade(format_version="2"), ["newer"]),
        "config.safetensors": (remade(model_config='{"vocab_size": 6, "cell": "lstm"'), ["model_config is not JSON"]),
        "sizes.safetensors": (remade(model_config=json.dumps({**weights.config.to_dict(), "num_layers": 2.5})),
                              ["--layers", "whole number"]),
        "vocab.safetensors": (remade(vocab=json.dumps({"mode": "char", "chars": "abc"})),
                              ["vocabulary (3) does not match the model (6)"]),
        "shape.safetensors": (remade(wrong_shape), ["head.weight", "(6, 31)", "(6, 32)"]),
        "missing.safetensors": (remade(missing), ["rnn.bias_hh_l1 is missing"]),
        "extra.safetensors": (remade(extra), ["rnn.weight_ih_l2"]),
        "nan.safetensors": (remade(non_finite, weights_sha256=_checksum(non_finite)), ["head.bias", "non-finite"]),
    }


def test_every_damaged_or_foreign_file_is_one_clear_line(weights, tmp_path, capfd):
    for name, (data, needles) in damaged_files(tmp_path, weights).items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CharnnError) as caught:
            read_weights(path)
        assert str(path) in str(caught.value)
        assert_one_line_naming(*call(["sample", path, "-n", "5"], capfd), path, *needles)
        assert path.read_bytes() == data


def test_info_and_sample_say_which_file_is_wrong(weights, tmp_path, capfd):
    path = tmp_path / "half.safetensors"
    path.write_bytes(encode_weights(weights)[:200])
    assert_one_line_naming(*call(["info", path], capfd), path, "damaged or truncated")
    assert_one_line_naming(*call(["sample", tmp_path / "missing.safetensors"], capfd), "missing.safetensors",
                           "no such")


def test_a_pickle_dressed_as_weights_is_refused_and_never_runs(tmp_path, capfd):
    class Exploit:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "evil.safetensors"
    with open(path, "wb") as f:
        torch.save({"format": FORMAT, "format_version": 1, "x": Exploit()}, f, pickle_module=pickle)
    assert_one_line_naming(*call(["sample", path], capfd), path)
    assert_one_line_naming(*call(["info", path], capfd), path)
    assert not (tmp_path / "pwned").exists()


def test_a_weights_file_builds_the_same_torch_model(workdir):
    """What `charnn sample --device cuda FILE.safetensors` builds (here on the CPU): best.pt's model."""
    from charnn import load_model, model_from_weights

    model = model_from_weights(read_weights(workdir["run"] / "best.safetensors"), "cpu")
    reference, _ = load_model(workdir["run"])
    ids = torch.arange(20).view(-1, 1) % model.config.vocab_size
    with torch.no_grad():
        assert torch.equal(model(ids)[0], reference(ids)[0]) and not model.training
