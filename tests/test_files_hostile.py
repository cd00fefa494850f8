"""Every file against a hostile disk (issue 23): what `export` may replace, endless primes, weights
files and run directories holding anything, and the plans and resumes that must refuse what the run
would. Real `charnn` processes through bash, in the worlds of tests/test_errors.py."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from test_errors import T, Case, assert_refused, attempt, build_world, charnn, run_all, trained  # noqa: F401


def crafted_weights(world: Path) -> None:
    """Weights files whose vocabulary no model could have: a lone surrogate, a repeat, the wrong order,
    a list where the characters go (each as long as the model's vocabulary, so only the check can tell)."""
    from safetensors import safe_open

    with safe_open(world / "good" / "best.safetensors", framework="np") as handle:
        metadata = dict(handle.metadata())
        arrays = {name: handle.get_tensor(name) for name in handle.keys()}
    chars = json.loads(metadata["vocab"])["chars"]
    bad = {"surrogate": chars[:-1] + "\ud800", "repeat": chars[:-1] + chars[-2], "unsorted": chars[::-1],
           "list": list(chars)}
    for name, value in bad.items():
        (world / f"{name}.safetensors").write_bytes(save(arrays, {**metadata, "vocab": json.dumps(
            {"mode": "char", "chars": value})}))


def attempt_in_world(world: Path, case: Case):
    crafted_weights(world)
    return attempt(world, case.command, case.setup)


CASES = {
    # item 1: export writes a new file or one charnn wrote, never anything else
    "export-onto-a-fifo": Case("charnn export good -o pipe", ("pipe", "not a regular file"), setup="mkfifo pipe"),
    "export-onto-a-symlink": Case("charnn export good -o link", ("link", "symbolic link"),
                                  setup="ln -s notes.txt link"),
    "export-onto-a-stdout-link": Case("charnn export good -o out", ("out", "symbolic link"),
                                      setup="ln -s /proc/self/fd/1 out"),
    "export-onto-tokens": Case("charnn export good -o good/tokens.npy", ("tokens.npy", "run's own")),
    "export-onto-config": Case("charnn export good -o good/config.json", ("config.json", "run's own")),
    "export-onto-metrics": Case("charnn export good -o good/metrics.jsonl", ("metrics.jsonl", "run's own")),
    "export-onto-the-users-file": Case("charnn export good -o notes.txt", ("notes.txt", "charnn did not write")),
    "export-stdout-closed": Case("charnn export good -o - >&-", ("stdout is closed",)),
    # item 2: an endless prime
    "prime-dev-zero": Case("charnn sample good --prime-file /dev/zero -n 5", ("/dev/zero", "longer than 16 MiB")),
    "prime-endless-stdin": Case("yes | charnn sample good --prime-file - -n 5", ("--prime-file -", "longer than")),
    # item 8: eval never scores a model as text
    "eval-weights-as-text": Case("charnn eval --model good good/best.safetensors",
                                 ("best.safetensors", "not text to score")),
    "eval-checkpoint-as-text": Case("charnn eval good small.txt good/last.pt", ("last.pt", "not text to score")),
    # item 10: --dry-run makes the run's checks
    "dry-run-nproc-batch": Case(f"charnn train small.txt {T} --nproc 2 --batch-size 3 --dry-run",
                                ("--batch-size 3", "does not divide among 2")),
    "dry-run-huge-hidden": Case(f"charnn train small.txt {T} --hidden-size 100000 --dry-run", ("out of memory",)),
    # item 11: --resume refuses what would change its losses' meaning, and says when it has nothing to do
    "resume-eval-chars": Case("charnn train --resume good --eval-chars 123", ("--eval-chars 123", "contradicts")),
    "resume-val-frac": Case("charnn train --resume good --val-frac 0.3", ("--val-frac 0.3", "contradicts")),
    "resume-size": Case("charnn train --resume good --size tiny", ("--resume", "--size")),
    "resume-limit-reached": Case("charnn train --resume good --max-steps 20", ("step 30", "--max-steps 20")),
    # item 12: weights vocabularies, a denormal penalty, API keys with spaces
    "vocab-surrogate": Case("charnn sample surrogate.safetensors -n 5", ("surrogate.safetensors", "lone surrogate")),
    "vocab-repeat": Case("charnn sample repeat.safetensors -n 5", ("repeat.safetensors", "distinct and sorted")),
    "vocab-unsorted": Case("charnn sample unsorted.safetensors -n 5", ("unsorted.safetensors", "sorted")),
    "vocab-a-list": Case("charnn sample list.safetensors -n 5", ("list.safetensors", "must be a string")),
    "serve-vocab-surrogate": Case("charnn serve surrogate.safetensors --port 0", ("lone surrogate",)),
    "penalty-denormal": Case("charnn sample good --repetition-penalty 5e-324 -n 5", ("--repetition-penalty",)),
    "api-key-spaces": Case("CHARNN_API_KEY=' k3y ' charnn serve good --port 0", ("--api-key", "white space")),
}


@pytest.fixture(scope="module")
def table(trained, tmp_path_factory):  # noqa: F811
    return run_all(trained, tmp_path_factory, CASES, attempt_in_world)


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_files_are_one_line_and_touch_nothing(table, name):
    case = CASES[name]
    assert_refused(table[name], case.code, case.needles, case.kind)


@pytest.fixture
def world(trained, tmp_path):  # noqa: F811
    return build_world(trained, tmp_path / "home")


def test_export_replaces_only_what_charnn_wrote(world):
    again = charnn(world, "charnn export good && charnn export good -o copy.safetensors && "
                          "charnn export good -o copy.safetensors")
    assert again.returncode == 0, again.stderr.decode()
    from charnn.model.weights import read_weights

    copy, beside = read_weights(world / "copy.safetensors"), read_weights(world / "good" / "best.safetensors")
    assert all(np.array_equal(copy.arrays[name], beside.arrays[name]) for name in beside.arrays)


def test_eval_takes_a_safetensors_model(world):
    weights = charnn(world, "charnn eval good/best.safetensors --json")
    checkpoint = charnn(world, "charnn eval good/best.pt --json")
    assert weights.returncode == 0 and checkpoint.returncode == 0, weights.stderr.decode()
    scored, expected = json.loads(weights.stdout), json.loads(checkpoint.stdout)
    assert scored["text"] == "validation" and scored["chars"] == expected["chars"]
    assert scored["loss"] == pytest.approx(expected["loss"], rel=1e-5)


@pytest.mark.parametrize("model", ["good", "good/best.pt"])
def test_a_damaged_safetensors_falls_back_to_its_checkpoint(world, model):
    path = world / "good" / "best.safetensors"
    path.write_bytes(path.read_bytes()[:200])  # cut short
    result = charnn(world, f"charnn sample {model} -n 20 --seed 1 --no-prime-echo")
    err = result.stderr.decode()
    assert result.returncode == 0 and len(result.stdout.decode()) == 20, err
    assert "best.safetensors" in err and "sampling from best.pt" in err


def test_an_odd_run_directory_never_hangs_or_breaks_the_list(world):
    odd = world / "runs" / "odd"
    odd.mkdir()
    os.mkfifo(odd / "config.json")  # nobody writes: opening it would wait forever
    os.mkfifo(odd / "metrics.jsonl")
    deep = world / "runs" / "deep"
    deep.mkdir()
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    shutil.copytree(world / "good", world / "runs" / "good")
    listed = charnn(world, "charnn runs --json", timeout=30)
    assert listed.returncode == 0, listed.stderr.decode()
    runs = {run["name"]: run for run in json.loads(listed.stdout)}
    assert runs["good"]["steps"] == 30 and runs["odd"]["problems"] and runs["deep"]["problems"]
    info = charnn(world, "charnn info runs/odd", timeout=30)
    assert info.returncode == 1 and len(info.stderr.decode().strip().splitlines()) == 1


def test_a_small_input_fits_on_a_nearly_full_disk(tmp_path, monkeypatch):
    """stdin is copied while the disk keeps a reserve: half of what was free, where less than the
    reserve is, so a small input still fits; an endless one still stops."""
    import io
    from collections import namedtuple

    from charnn.data import corpus
    from charnn.errors import CharnnError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(corpus.shutil, "disk_usage", lambda path: usage(1 << 30, 0, 100 << 20))  # 100 MiB free
    with open(tmp_path / "copy", "wb") as out:
        corpus._copy_with_room(io.BytesIO(b"small input\n" * 1000), out, tmp_path, "-")
    assert (tmp_path / "copy").stat().st_size == 12_000
    endless = io.BytesIO(np.zeros(60 << 20, dtype=np.uint8).tobytes())  # more than half of what is free
    with open(tmp_path / "copy", "wb") as out, pytest.raises(CharnnError, match="nearly full"):
        monkeypatch.setattr(corpus, "_READ_BYTES", 1 << 20)
        free = iter(range(100 << 20, 0, -(1 << 20)))
        monkeypatch.setattr(corpus.shutil, "disk_usage", lambda path: usage(1 << 30, 0, next(free)))
        corpus._copy_with_room(endless, out, tmp_path, "-")
