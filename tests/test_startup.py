"""Commands that train nothing start without PyTorch: each runs in a process of its own, and the test
fails if `torch` is in sys.modules when it exits. The commands that need PyTorch still load it."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from charnn import CharRNN, Vocab, write_weights
from charnn.bench import startup as bench_startup
from charnn.model.weights import Weights

from conftest import REPO, tiny_model_config

# runs `charnn ARGS` and, at exit, writes whether PyTorch was loaded to the file $CHARNN_TORCH_PROBE names
PROBE = ("import atexit, os, sys\n"
         "atexit.register(lambda: open(os.environ['CHARNN_TORCH_PROBE'], 'w').write(str('torch' in sys.modules)))\n"
         "from charnn.__main__ import main\n"
         "sys.argv[0] = 'charnn'\n"
         "sys.exit(main())\n")


def run_probed(args, env, tmp_path, stdin: bytes = b""):
    return run_probed_in(None, args, env, tmp_path, stdin)


def side_by_side(function, items) -> list:
    """`function` over `items`, two at a time: each probe is one single-threaded process starting up."""
    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(function, items))


def run_probed_in(cwd, args, env, tmp_path, stdin: bytes = b"", code: int = 0):
    """`charnn ARGS` in a process of its own: its result, and whether it had imported PyTorch at exit."""
    probe = tmp_path / f"probe-{uuid.uuid4().hex}.txt"  # one of its own: probes may run side by side
    result = subprocess.run([sys.executable, "-c", PROBE, *map(str, args)], input=stdin, capture_output=True,
                            cwd=cwd, timeout=300,
                            env={**os.environ, **env, "CHARNN_TORCH_PROBE": str(probe), "COLUMNS": "120"})
    assert result.returncode == code, f"charnn {' '.join(map(str, args))}\n{result.stderr.decode()}"
    return result, probe.read_text() == "True"


@pytest.fixture(scope="module")
def records_weights(tmp_path_factory):
    """A model trained with --reset-on, as a bare .safetensors file."""
    torch.manual_seed(0)
    vocab = Vocab(chars="\n:abc")  # sorted by code point, as every vocabulary is
    model = CharRNN(tiny_model_config(vocab.size, reset_ids=(0,)))
    path = tmp_path_factory.mktemp("records") / "records.safetensors"
    arrays = {name: tensor.numpy().copy() for name, tensor in model.state_dict().items()}
    write_weights(path, Weights(model.config, vocab, arrays, {"step": 1}))
    return path


def torch_free_commands(run, records, tmp_path):
    prime = tmp_path / "prime.txt"
    prime.write_text("ROMEO:\n")
    commands = [["--help"], ["--version"], *([name, "--help"] for name in
                                             ("train", "sample", "eval", "bench", "runs", "info", "plot", "export",
                                              "serve"))]
    commands += [["runs"], ["runs", "--json"], ["info"], ["info", run, "--json"], ["info", run / "best.safetensors"],
                 ["info", run / "last.pt", "--json"], ["plot", run, "--width", "80", "--height", "16"]]
    commands += [["sample", "-n", "50", "--seed", "1"], ["sample", run / "best.safetensors", "-n", "20"],
                 ["sample", run / "best.pt", "-n", "20"], ["sample", run, "--device", "cpu", "-n", "20"],
                 ["sample", run, "-n", "60", "--seed", "2", "--temp", "0.7", "--top-k", "5", "--top-p", "0.9",
                  "--min-p", "0.05", "--repetition-penalty", "1.3", "--repetition-window", "8", "--num-samples", "3",
                  "--separator", "\\0", "--stop", "e"],
                 ["sample", run, "--prime", "ROMEO:", "--temp", "0", "-n", "30"],
                 ["sample", run, "--prime-file", prime, "--no-prime-echo", "-n", "30"],
                 ["sample", run, "--beam", "3", "-n", "30", "--repetition-penalty", "1.5"],
                 ["sample", records, "-n", "40", "--seed", "3", "--stop", "\\n\\n"],
                 ["sample", records, "--beam", "2", "-n", "20", "--prime", "a:"]]
    try:
        import matplotlib  # noqa: F401

        commands.append(["plot", run, "--png", tmp_path / "loss.png"])
    except ImportError:
        pass
    return commands


def test_commands_that_train_nothing_never_import_torch(workdir, records_weights, tmp_path):
    commands = torch_free_commands(workdir["run"], records_weights, tmp_path)
    found = side_by_side(lambda args: run_probed(args, workdir["env"], tmp_path), commands)
    for args, (_, loaded) in zip(commands, found):
        assert not loaded, f"charnn {' '.join(map(str, args))} imported torch"


def test_train_answers_a_mistake_before_loading_torch(workdir, tmp_path):
    """What can be checked before the corpus is read is checked before PyTorch loads: the answer comes at once."""
    corpus, run = workdir["corpus"], workdir["run"]
    mistakes = {"no such file": ["train", tmp_path / "missing.txt"],
                "already holds a run": ["train", corpus, "--out", run],
                "--layers must be at most": ["train", corpus, "--layers", "99999"],
                "--seed must be": ["train", corpus, "--seed", "-5"],
                "no corpus given": ["train"]}
    found = side_by_side(lambda args: run_probed_in(None, args, workdir["env"], tmp_path, code=1), mistakes.values())
    for needle, (result, loaded) in zip(mistakes, found):
        assert needle in result.stderr.decode() and not loaded, needle


def test_stdin_primes_and_the_interactive_prompt_need_no_torch(workdir, tmp_path):
    result, loaded = run_probed(["sample", workdir["run"], "--prime-file", "-", "-n", "20", "--seed", "0"],
                                workdir["env"], tmp_path, stdin=b"JULIET:\n")
    assert not loaded and result.stdout.decode().startswith("JULIET:\n")
    result, loaded = run_probed(["sample", workdir["run"], "--interactive", "-n", "20", "--seed", "0"],
                                workdir["env"], tmp_path, stdin=b"ROMEO:\n\n/reset\nJULIET\n/quit\n")
    assert not loaded and result.stdout.decode().count("ROMEO:") == 0 and len(result.stdout.decode()) == 60


def test_commands_that_need_torch_still_load_it(workdir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "best.pt").write_bytes((workdir["run"] / "best.pt").read_bytes())  # trained before best.safetensors
    from_checkpoint, loaded = run_probed(["sample", bare, "-n", "20", "--seed", "1"], workdir["env"], tmp_path)
    assert loaded and len(from_checkpoint.stdout) == 20
    for args in (["sample", workdir["run"], "--device", "auto", "-n", "5"], ["eval", workdir["run"], "--json"],
                 ["export", bare]):
        result, loaded = run_probed(args, workdir["env"], tmp_path)
        assert loaded, f"charnn {' '.join(map(str, args))}"
    from_weights, loaded = run_probed(["sample", bare, "-n", "20", "--seed", "1"], workdir["env"], tmp_path)
    assert not loaded and from_weights.stdout == from_checkpoint.stdout  # exported: the same text, without PyTorch


def test_the_startup_benchmark_times_every_command(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_startup, "RUNS", 2)
    monkeypatch.setattr(bench_startup, "MODEL", {"num_layers": 1, "hidden_size": 16})
    rows = bench_startup.bench_startup(tmp_path, rounds=1, before=REPO)
    assert [r["command"] for r in rows] == ['python -c "import numpy"', 'python -c "import torch"', "charnn --help",
                                            "charnn runs", "charnn sample RUN -n 200", "charnn info RUN"]
    assert all(r["seconds"] > 0 and r["rounds"] == 1 for r in rows)
    ours = rows[2:]
    assert all(r["before_seconds"] > 0 and r["speedup"] > 0 and r["goal_seconds"] > 0 for r in ours)
    assert "before_seconds" not in rows[0] and len(list((tmp_path / "runs").glob("run-*"))) == 2
    assert bench_startup.bench_startup(tmp_path / "none", rounds=0) == []
    assert np.isfinite([r["seconds"] for r in rows]).all()


TORCH_FREE = ("config", "errors", "units", "printable", "runtime.threads", "runtime.memory", "runtime.processes",
              "runtime.signals", "data.files", "data.checked", "data.corpus", "data.vocab", "data.tokens",
              "model.spec", "model.archive", "model.base", "model.weights", "model.engine", "runs.rundir",
              "runs.locate", "runs.claim", "runs.metrics", "runs.history", "runs.info", "plan.request",
              "generate.settings", "generate.choice", "generate.streams", "generate.beam", "generate.sampler",
              "generate.output", "serve.completions", "serve.chat", "serve.batcher", "serve.relay",
              "serve.server", "serve.tally", "serve.workers", "serve.engines", "cli")


def test_the_modules_that_read_runs_and_sample_never_import_torch():
    code = (f"import importlib, sys; [importlib.import_module('charnn.' + m) for m in {TORCH_FREE!r}]; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr


def readme_sample_commands() -> list[list[str]]:
    """Every `charnn sample ...` of the README's shell blocks, up to a pipe or comment (not the usage line)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.+?)\n```", text, flags=re.S):
        for found in re.findall(r"charnn sample([^|#&;\n]*)", block):
            if "[" not in found:
                commands.append(shlex.split(found))
    return commands


def test_every_sampling_example_in_the_readme_needs_no_torch(workdir, tmp_path):
    """Run as written against a trained run (runs/demo, the newest run), with lengths cut to 2,000."""
    runs = tmp_path / "runs"
    shutil.copytree(workdir["run"], runs / "demo")
    (runs / "latest").write_text(str(runs / "demo") + "\n")
    shutil.copy(workdir["run"] / "best.safetensors", tmp_path / "model.safetensors")
    commands = readme_sample_commands()
    assert len(commands) >= 9
    for args in commands:
        if "-n" in args:
            args[args.index("-n") + 1] = str(min(int(args[args.index("-n") + 1]), 2000))
    env = {**workdir["env"], "CHARNN_RUNS_DIR": str(runs)}
    found = side_by_side(lambda args: run_probed_in(tmp_path, ["sample", *args], env, tmp_path,
                                                    stdin=b"The will to\n"), commands)
    for args, (result, loaded) in zip(commands, found):
        assert not loaded and result.stdout, args
