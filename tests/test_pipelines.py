"""charnn in shell pipelines: the README's pipeline examples run for real, shell completion, and
what a terminal, a pipe and NO_COLOR each get on stderr."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO, TINY, Terminal

ANSI = re.compile(rb"\x1b\[")


def readme_pipeline_commands() -> list[str]:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## charnn in pipelines", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


@pytest.fixture
def shell(tmp_path):
    """A directory with the corpora, `charnn` on PATH (this interpreter's), and a runs root of its own."""
    (tmp_path / "corpora").symlink_to(REPO / "corpora")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "charnn"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m charnn "$@"\n')
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "CHARNN_RUNS_DIR": str(tmp_path / "runs")}

    def run(command: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=tmp_path, env=env,
                              capture_output=True, timeout=300, **kwargs)

    run.cwd = tmp_path
    return run


def test_readme_pipeline_examples_run_as_written(shell):
    commands = readme_pipeline_commands()
    checks = [
        lambda out: out == b"" and (shell.cwd / "runs" / "demo" / "best.pt").is_file(),
        lambda out: int(out) > 100,
        lambda out: int(out) >= 0,
        lambda out: len(out.splitlines()) == 4 and all(line.startswith(b"> ") for line in out.splitlines()),
        lambda out: out.startswith(b"The will to\n") and len(out.decode()) == len("The will to\n") + 80,
        lambda out: len(out) == 200,
        lambda out: 0 < float(out) < 8,
        lambda out: out == b"" and json.loads((shell.cwd / "scores.json").read_text())["chars"] > 1000,
        lambda out: out == b"demo\n",
    ]
    assert len(commands) == len(checks), "the README's pipeline block and this test must list the same commands"
    for command, check in zip(commands, checks):
        result = shell(command)
        assert result.returncode == 0, f"{command}\n{result.stderr.decode()}"
        assert b"Traceback" not in result.stderr and b"Error" not in result.stderr, command
        assert check(result.stdout), f"{command}\n{result.stdout[:500]!r}"


def test_shell_completion_installs_and_completes(shell):
    # typer finds the shell among charnn's parent processes; `&& true` keeps bash from exec'ing charnn
    # in its own place, so bash stays the parent wherever pytest itself was started from
    result = shell("charnn --install-completion bash && true")
    assert result.returncode == 0, result.stderr.decode()
    completed = shell("source ~/.bash_completions/charnn.sh; COMP_WORDS=(charnn sa); COMP_CWORD=1; "
                      "_charnn_completion charnn; echo \"${COMPREPLY[@]}\"; COMP_WORDS=(charnn sample --st); "
                      "COMP_CWORD=2; _charnn_completion charnn; echo \"${COMPREPLY[@]}\"")
    lines = completed.stdout.decode().splitlines()
    assert completed.returncode == 0 and lines[0] == "sample" and "--stop" in lines[1].split()


@pytest.mark.parametrize("env,live", [({"TERM": "xterm-256color"}, True),
                                      ({"TERM": "xterm-256color", "NO_COLOR": "1"}, False),
                                      ({"TERM": "dumb"}, False)])
def test_live_colour_progress_only_on_a_real_terminal_without_no_color(tmp_path, env, live):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes((REPO / "corpora" / "tinyshakespeare.txt").read_bytes()[:20_000])
    environment = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
    terminal = Terminal(["train", corpus, *TINY, "--out", tmp_path / "run"], {**environment, **env}, inherit=False)
    try:
        screen = terminal.read_to_end()
        assert terminal.close() == 0 and b"done (max-steps)" in screen
    finally:
        terminal.process.kill()
    assert bool(ANSI.search(screen)) == live
    assert (b"step      10" in screen) == (not live)  # plain log lines instead of the live line


def test_a_pipe_gets_plain_lines_and_no_colour(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes((REPO / "corpora" / "tinyshakespeare.txt").read_bytes()[:20_000])
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    result = subprocess.run([sys.executable, "-m", "charnn", "train", str(corpus), *TINY, "--out",
                             str(tmp_path / "run")], capture_output=True, env={**env, "TERM": "xterm-256color"},
                            timeout=120)
    assert result.returncode == 0 and result.stdout == b""
    assert not ANSI.search(result.stderr) and b"step      10" in result.stderr


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_at_any_moment_ends_with_its_exit_code_and_no_traceback(workdir, signum, code):
    """Half a second in, the command is still importing PyTorch or already waiting at its prompt:
    either way the signal ends it with the documented code and one line."""
    process = subprocess.Popen([sys.executable, "-m", "charnn", "sample", str(workdir["run"]), "--interactive"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5)
    process.send_signal(signum)
    returncode = process.wait(timeout=60)  # stdin stays open: no end of input to end it otherwise
    out, err = process.communicate()
    assert returncode in (code, -signum), err.decode()  # the shell shows both as $? = 128 + signal
    assert b"Traceback" not in err and out == b""
    if returncode == code:  # not killed before Python had started charnn (on a very busy machine)
        assert err.rstrip().endswith(b"charnn: interrupted" if code == 130 else b"charnn: terminated")


# A command on the real error edge, in a fresh interpreter, where the signal's exception is lost on the way:
# Python runs a handler wherever the main thread is, and drops or wraps what it raises in a few places.
DROPPED_SIGNAL = """
import signal, sys
from charnn.cli import app, main
from charnn.cli.sample import _Lines

class Drops:
    def __del__(self):  # an exception raised in here is printed as "Exception ignored" and dropped
        signal.raise_signal(signal.SIGNUM)

class Wraps:
    def __set_name__(self, owner, name):  # Python wraps what this raises in a RuntimeError
        signal.raise_signal(signal.SIGNUM)

@app.command("dropped")
def dropped(wait: bool = False):
    Drops()
    if wait:
        _Lines(sys.stdin.buffer).readline()  # a prompt that nobody answers

@app.command("wrapped")
def wrapped():
    type("Finfo", (), {"eps": Wraps()})

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize("where", [["dropped", "--wait"], ["dropped"], ["wrapped"]])
def test_a_signal_whose_exception_python_drops_or_wraps_still_ends_the_command(where, signum, code):
    """Waiting at a prompt, ending normally, or with the exception turned into another: the command ends
    with the signal's exit code and its one line, never a hang or an "internal error"."""
    script = DROPPED_SIGNAL.replace("SIGNUM", signal.Signals(signum).name)
    process = subprocess.Popen([sys.executable, "-c", script, *where], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, err = process.communicate(timeout=60)  # stdin stays open: only the signal can end the wait
    finally:
        process.kill()
    assert process.returncode == code, err.decode()
    assert err.rstrip().endswith(b"charnn: interrupted" if code == 130 else b"charnn: terminated"), err.decode()
    assert b"internal error" not in err and b"Traceback" not in err


# A command that imports PyTorch, with the signal landing while PyTorch initialises (from a hook that runs
# as it imports its C++ core): an exception raised in there can abort the process, so it ends at once.
SIGNAL_IN_TORCH_IMPORT = """
import importlib.abc, signal, sys
from charnn.cli import main

class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch._C":
            sys.meta_path.remove(self)
            signal.raise_signal(signal.SIGNUM)
        return None

sys.meta_path.insert(0, Hook())
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_pytorch_imports_ends_the_command_at_once(workdir, signum, code):
    script = SIGNAL_IN_TORCH_IMPORT.replace("SIGNUM", signal.Signals(signum).name)
    result = subprocess.run([sys.executable, "-c", script, "eval", str(workdir["run"])], capture_output=True,
                            timeout=120, env={**os.environ, **workdir["env"]})
    assert result.returncode == code and result.stdout == b"", result.stderr.decode()
    assert result.stderr.decode().splitlines() == ["charnn: interrupted" if code == 130 else "charnn: terminated"]
