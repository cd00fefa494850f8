"""Nothing lost, ever: bad and unusual input, tried the way a user would, in real processes.

Every case of the table runs `charnn` through bash (so redirections such as `>&-` are real) in a
directory holding the user's own files and a trained run, and checks four things: the exit code;
exactly one line on stderr, `charnn: error: ...` (or `charnn: usage error: ...`), saying what is
wrong; the whole tree byte for byte as it was (checksums; the token cache is charnn's own and may
grow); and no temporary file left anywhere in it.
"""

import hashlib
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import SHAKESPEARE, TINY, Terminal, run_cli

# capabilities that let root ignore file modes: dropped so permission cases mean something as root too
SETPRIV = "setpriv --bounding-set -dac_override,-dac_read_search"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    corpus = root / "small.txt"
    corpus.write_bytes(SHAKESPEARE.read_bytes()[:20_000])
    result = run_cli("train", corpus, *TINY, "--out", root / "good", env={"CHARNN_RUNS_DIR": str(root / "runs")})
    assert result.returncode == 0, result.stderr.decode()
    return root


def _crafted(payload_changes: dict, good_checkpoint) -> dict:
    payload = torch.load(good_checkpoint, weights_only=True)
    payload.update(payload_changes)
    return payload


@pytest.fixture
def world(trained, tmp_path):
    return build_world(trained, tmp_path / "home")


def build_world(trained, root):
    """The user's directory: their files, a trained run (runs/latest names it), and odd files."""
    root.mkdir()
    shutil.copy(trained / "small.txt", root / "small.txt")
    shutil.copytree(trained / "good", root / "good")
    (root / "runs").mkdir()
    (root / "runs" / "latest").write_text(str(root / "good") + "\n")
    mlproj = root / "mlproj"  # looks a little like a run, but charnn did not make it
    (mlproj / "checkpoints").mkdir(parents=True)
    (mlproj / "checkpoints" / "model-v1.bin").write_bytes(b"weights of another project")
    (mlproj / "metrics.jsonl").write_text('{"acc": 0.9}\n')
    (mlproj / "tokens.npy").write_bytes(b"not ours")
    fake = root / "fakehome"  # a config.json that is not charnn's
    (fake / "docs").mkdir(parents=True)
    (fake / "notes.txt").write_text("remember the milk\n")
    (fake / "docs" / "readme.md").write_text("# docs\n")
    (fake / "config.json").write_text('{"theme": "dark"}\n')
    (root / "notes.txt").write_text("the user's notes\n")
    good_pt = root / "good" / "best.pt"
    crafted = {"layers.pt": {"model_config": {**_crafted({}, good_pt)["model_config"], "num_layers": 1e9}},
               "string.pt": {"model_config": "lstm please"},
               "shapes.pt": {"model_config": {**_crafted({}, good_pt)["model_config"], "hidden_size": 64}}}
    for name, changes in crafted.items():
        torch.save(_crafted(changes, good_pt), root / name)
    (root / "random.pt").write_bytes(os.urandom(4096))
    with open(root / "pickle.pt", "wb") as f:
        pickle.dump({"weights": [1, 2, 3]}, f)
    return root


def tree(root) -> dict:
    """Every file's checksum, every directory and link, under root (charnn's token cache aside)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".cache"]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            key = os.path.relpath(path, root)
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                found[key] = "link:" + os.readlink(path)
            elif stat.S_ISREG(mode):
                with open(path, "rb") as f:
                    found[key] = hashlib.sha256(f.read()).hexdigest()
            else:
                found[key] = f"{stat.S_IFMT(mode):o}"  # a directory, a FIFO: never opened
    return found


def temporaries(root) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(root) for n in names
            if n.endswith(".tmp") or n.startswith(".stdin-")]


def charnn(world, command: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`charnn ...` as bash runs it in the user's directory (this interpreter's charnn)."""
    # one thread: table cases run side by side, and PyTorch's spinning OpenMP threads crowd each other out
    env = {**os.environ, "CHARNN_RUNS_DIR": str(world / "runs"), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    env.pop("CHARNN_DEBUG", None)
    script = f'charnn() {{ "{sys.executable}" -m charnn "$@"; }}\n{command}'
    return subprocess.run(["bash", "-c", script], cwd=world, env=env, capture_output=True, timeout=timeout)


@dataclass
class Attempt:
    """A command run in a world: what it said, and the tree before and after."""

    command: str
    result: subprocess.CompletedProcess
    before: dict
    after: dict
    left: list[str]


def attempt(world, command: str, setup: str = "") -> Attempt:
    if setup:
        assert charnn(world, setup).returncode == 0, setup
    before = tree(world)
    result = charnn(world, command)
    return Attempt(command, result, before, tree(world), temporaries(world))


def assert_refused(tried: Attempt, code: int, needles: tuple[str, ...], kind: str = "error") -> None:
    err = tried.result.stderr.decode("utf-8", "replace")
    lines = [line for line in err.splitlines() if line.strip()]
    assert tried.result.returncode == code, (tried.command, err)
    assert len(lines) == 1 and lines[0].startswith(f"charnn: {kind}: "), (tried.command, err)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert tried.after == tried.before, tried.command
    assert tried.left == [], tried.command


def run_all(trained, tmp_path_factory, cases: dict, run_one) -> dict:
    """Each case in a world of its own, as many at a time as there are cores: most of a case is a
    process starting up, and one pytest process would leave the other cores idle."""
    def one(name):
        return name, run_one(build_world(trained, tmp_path_factory.mktemp(name) / "home"), cases[name])

    with ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        return dict(pool.map(one, cases))


@dataclass(frozen=True)
class Case:
    command: str
    needles: tuple[str, ...]
    code: int = 1
    kind: str = "error"
    setup: str = ""  # a shell command run before the tree is recorded


T = " ".join(map(str, TINY))
CASES = {
    # files charnn does not own (items 1-3)
    "out-not-a-run": Case(f"charnn train small.txt {T} --out mlproj", ("mlproj", "not a charnn run")),
    "out-dot-not-a-run": Case(f"cd mlproj && charnn train ../small.txt {T} --out .", ("not a charnn run",)),
    "out-foreign-config": Case(f"charnn train small.txt {T} --out fakehome", ("fakehome", "not a charnn run")),
    "out-foreign-overwrite": Case(f"charnn train small.txt {T} --out fakehome --overwrite", ("not a charnn run",)),
    "out-a-run": Case(f"charnn train small.txt {T} --out good", ("already holds a run", "--overwrite")),
    "out-empty": Case(f"charnn train small.txt {T} --out ''", ("--out", "empty path"), 2, "usage error"),
    "corpus-empty-path": Case(f"charnn train '' {T}", ("CORPUS", "empty path"), 2, "usage error"),
    "latest-a-directory": Case(f"charnn train small.txt {T} --out new", ("latest", "is a directory"),
                               setup="rm runs/latest && mkdir runs/latest"),
    # signals and input (item 6, 8)
    "corpus-a-device": Case(f"charnn train /dev/zero {T} --out new", ("/dev/zero", "device")),
    "stdout-full": Case("charnn sample good -n 50 > /dev/full", ("cannot write",)),
    "stdout-closed": Case("charnn sample good -n 50 >&-", ("stdout is closed",)),
    "json-stdout-full": Case("charnn runs --json > /dev/full", ("cannot write to stdout",)),
    "stdin-closed": Case(f"charnn train - {T} --out new <&-", ("stdin is closed",)),
    "prime-stdin-closed": Case("charnn sample good --prime-file - <&-", ("stdin is closed",)),
    # limits checked before any work (items 9-11)
    "hidden-huge": Case(f"charnn train small.txt {T} --hidden-size 99999999 --out new", ("out of memory",)),
    "hidden-overflow": Case(f"charnn train small.txt {T} --hidden-size 99999999999999999999 --out new",
                            ("out of memory",)),
    "layers-huge": Case(f"charnn train small.txt {T} --layers 99999 --out new", ("--layers", "at most")),
    "samples-huge": Case("charnn sample good --num-samples 100000000", ("out of memory", "--num-samples")),
    "beam-huge": Case("charnn sample good --beam 1000000000", ("out of memory", "--beam")),
    "crafted-layers": Case("charnn sample layers.pt", ("layers.pt", "--layers")),
    "crafted-shapes": Case("charnn sample shapes.pt -n 5", ("shapes.pt", "do not match")),
    "nproc-error-once": Case(f"charnn train missing.txt {T} --nproc 2", ("missing.txt", "no such file")),
    "nproc-too-many": Case(f"charnn train small.txt {T} --nproc 100000", ("--nproc",)),
    "bench-json-nowhere": Case("charnn bench --quick --json nodir/out.json", ("nodir", "no such directory")),
    # every mistake in words (items 12-13, 15)
    "sample-seed-negative": Case("charnn sample good --seed -1", ("--seed",)),
    "sample-seed-huge": Case("charnn sample good --seed 99999999999999999999999", ("--seed",)),
    "train-seed-negative": Case(f"charnn train small.txt {T} --seed -5 --out new", ("--seed",)),
    "config-a-string": Case("charnn sample string.pt", ("string.pt", "model")),
    "random-bytes": Case("charnn sample random.pt", ("random.pt", "not a checkpoint")),
    "raw-pickle": Case("charnn info pickle.pt", ("pickle.pt", "not a checkpoint")),
    "stop-empty": Case("charnn sample good --stop ''", ("--stop",)),
    "interactive-samples": Case("charnn sample good --interactive --num-samples 2", ("--interactive", "--num-samples")),
    "eval-run-as-text": Case("charnn eval small.txt good --model good", ("good", "run directory")),
    "emoji-in-a-name": Case("charnn info 'runs/my:100:model'", ("runs/my:100:model",)),
    "emoji-in-a-neuron": Case("charnn eval good --neuron 0:-1:", ("0:-1:",)),
}


@pytest.fixture(scope="module")
def table(trained, tmp_path_factory):
    return run_all(trained, tmp_path_factory, CASES, lambda world, case: attempt(world, case.command, case.setup))


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_touches_nothing(table, name):
    case = CASES[name]
    assert_refused(table[name], case.code, case.needles, case.kind)


PERMISSION_CASES = {
    "unreadable-corpus-file": ("chmod 000 corpus/b.txt", f"charnn train corpus {T} --out new",
                               ("b.txt", "Permission denied")),
    "unwritable-out": ("mkdir locked && chmod 555 locked", f"charnn train small.txt {T} --out locked/run",
                       ("locked", "Permission denied")),
    "unwritable-runs-dir": ("chmod 555 runs", f"charnn train small.txt {T}", ("runs", "Permission denied")),
    "unwritable-cache": ("mkdir runs/.cache && chmod 555 runs/.cache", f"charnn train small.txt {T} --out new",
                         (".cache", "Permission denied")),
    "read-only-run-resume": ("chmod -R a-w good", "charnn train --resume good --max-steps 40", ("good", "read-only")),
    "unreadable-checkpoint": ("chmod 000 good/best.pt", "charnn info good/best.pt", ("best.pt", "Permission denied")),
}


def attempt_without_privileges(world, case) -> Attempt:
    """File modes bind root too here: the command runs without the capabilities that override them."""
    setup, command, _ = case
    (world / "corpus").mkdir()
    (world / "corpus" / "a.txt").write_bytes(SHAKESPEARE.read_bytes()[:20_000])
    (world / "corpus" / "b.txt").write_text("more text\n")
    try:
        return attempt(world, command.replace("charnn ", f'{SETPRIV} "{sys.executable}" -m charnn ', 1), setup)
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", str(world)], check=True)


@pytest.fixture(scope="module")
def permission_table(trained, tmp_path_factory):
    return run_all(trained, tmp_path_factory, PERMISSION_CASES, attempt_without_privileges)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to test file modes")
@pytest.mark.parametrize("name", list(PERMISSION_CASES))
def test_permission_errors_are_one_line(permission_table, name):
    assert_refused(permission_table[name], 1, PERMISSION_CASES[name][2])


# --- run directories: what charnn owns, the lock, replacing a run ---------------------------------


def test_a_latest_link_is_replaced_never_written_through(world):
    (world / "runs" / "latest").unlink()
    (world / "runs" / "latest").symlink_to(world / "notes.txt")
    result = charnn(world, f"charnn train small.txt {T} --out new")
    assert result.returncode == 0, result.stderr.decode()
    assert (world / "notes.txt").read_text() == "the user's notes\n"
    latest = world / "runs" / "latest"
    assert not latest.is_symlink() and latest.read_text().strip() == str((world / "new").resolve())


def test_a_damaged_latest_falls_back_to_the_newest_run(world):
    (world / "runs" / "latest").write_bytes(os.urandom(300))
    shutil.copytree(world / "good", world / "runs" / "good")
    result = charnn(world, "charnn sample -n 20 --seed 1 --no-prime-echo")
    assert result.returncode == 0 and len(result.stdout.decode()) == 20, result.stderr.decode()


def test_a_run_directory_has_one_writer_and_a_killed_one_leaves_no_lock(world):
    # one thread: it trains while the other commands start, and PyTorch's spinning threads would crowd them out
    env = {**os.environ, "CHARNN_RUNS_DIR": str(world / "runs"), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "charnn", "train", "small.txt", *map(str, TINY), "--max-steps",
                              "100000", "--eval-every", "100000", "--log-every", "1", "--out", "busy"],
                             cwd=world, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for line in first.stderr:  # wait until it trains
            if line.startswith(b"step"):
                break
        before = tree(world)
        second = charnn(world, f"charnn train small.txt {T} --out busy --overwrite")
        err = second.stderr.decode()
        assert second.returncode == 1 and err.count("\n") == 1, err
        assert f"charnn process {first.pid} is training" in err
        resumed = charnn(world, "charnn train --resume busy --max-steps 5")
        assert resumed.returncode == 1 and f"process {first.pid}" in resumed.stderr.decode()
        assert tree(world) == before or set(tree(world)) == set(before)  # only the first run's own writes
    finally:
        first.kill()
        first.wait()
    # the system released the killed process's lock: the run can be replaced at once
    again = charnn(world, f"charnn train small.txt {T} --out busy --overwrite")
    assert again.returncode == 0, again.stderr.decode()


def snapshot_files(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_model(world):
    old = snapshot_files(world / "good")
    # stopped before its first evaluation (Ctrl-C as training starts): the old run is back, whole
    env = {**os.environ, "CHARNN_RUNS_DIR": str(world / "runs")}
    process = subprocess.Popen([sys.executable, "-m", "charnn", "train", "small.txt", *map(str, TINY), "--max-steps",
                                "100000", "--eval-every", "100000", "--log-every", "1", "--out", "good",
                                "--overwrite"], cwd=world, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for line in process.stderr:
        if line.startswith(b"step"):
            break
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=120)[1].decode()
    assert process.returncode == 130 and "holds the run it held before" in err, err
    assert snapshot_files(world / "good") == old
    # run to its end: now the new run is in its place, and nothing of the old one stays
    result = charnn(world, f"charnn train small.txt {T} --out good --overwrite --seed 7")
    assert result.returncode == 0, result.stderr.decode()
    new = snapshot_files(world / "good")
    assert new != old and (world / "good" / "best.pt").is_file() and not (world / "good" / ".replaced").exists()


def test_a_replacement_killed_halfway_is_undone_by_the_next_command_that_claims_the_run(world):
    from charnn.runs.session import RunSession

    old = snapshot_files(world / "good")
    session = RunSession.new("good", world / "good", overwrite=True)  # what a killed --overwrite leaves behind
    (world / "good" / "metrics.jsonl").write_text('{"kind": "train", "step": 1, "loss": 3.0}\n')
    session.lock.release()  # the lock goes with the process; the old run is still set aside
    assert (world / "good" / ".replaced").is_dir() and not (world / "good" / "best.pt").exists()
    result = charnn(world, "charnn train --resume good --max-steps 31")
    assert result.returncode == 0, result.stderr.decode()
    assert not (world / "good" / ".replaced").exists()
    records = [json.loads(line) for line in (world / "good" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [15, 30, 31]  # the old run's, continued
    assert old[Path("tokens.npy")] == (world / "good" / "tokens.npy").read_bytes()


# --- signals while the corpus is read -------------------------------------------------------------


def _start(world, *args, stdin=subprocess.DEVNULL):
    env = {**os.environ, "CHARNN_RUNS_DIR": str(world / "runs")}
    return subprocess.Popen([sys.executable, "-m", "charnn", *map(str, args)], cwd=world, env=env, stdin=stdin,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_until_reading(process, seconds: float = 60) -> None:
    """Until the process has PyTorch loaded and sits in a read (it then sleeps, waiting for input)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            maps = Path(f"/proc/{process.pid}/maps").read_text()
            state = Path(f"/proc/{process.pid}/stat").read_text().split()[2]
        except OSError:
            break
        if "libtorch" in maps and state == "S":
            time.sleep(0.5)
            return
        time.sleep(0.2)


@pytest.mark.parametrize("signum,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_a_pipe_is_read_ends_at_once_and_touches_nothing(world, signum, code, word):
    os.mkfifo(world / "pipe")  # no writer: reading it waits forever
    before = tree(world)
    process = _start(world, "train", "pipe", *TINY, "--out", "good", "--overwrite")
    _wait_until_reading(process)
    process.send_signal(signum)
    err = process.communicate(timeout=30)[1]
    assert process.returncode == code and err.decode().strip() == f"charnn: {word}", err
    assert tree(world) == before and temporaries(world) == []


def test_ctrl_c_while_stdin_is_copied_leaves_no_copy(world):
    before = tree(world)
    yes = subprocess.Popen(["yes", "all work and no play"], stdout=subprocess.PIPE)
    process = _start(world, "train", "-", *TINY, "--out", "new", stdin=yes.stdout)
    yes.stdout.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list((world / "runs").rglob(".stdin-*")):
        time.sleep(0.1)  # the copy has begun
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=30)[1].decode()
    yes.kill()
    assert process.returncode == 130 and err.strip() == "charnn: interrupted", err
    assert tree(world) == before and temporaries(world) == [] and not (world / "new").exists()


# --- every mistake in words -----------------------------------------------------------------------


def test_a_proc_file_is_read_although_its_size_says_zero(world):
    result = charnn(world, "charnn train /proc/self/status --layers 1 --hidden-size 8 --batch-size 1 --seq-len 16 "
                           "--max-steps 2 --out proc -q")
    assert result.returncode == 0, result.stderr.decode()
    assert (world / "proc" / "best.pt").is_file()


def test_divergence_names_a_checkpoint_only_if_there_is_one(world):
    result = charnn(world, f"charnn train small.txt {T} --lr 1e308 --warmup-steps 0 --out diverged")
    err = result.stderr.decode()
    lines = [line for line in err.splitlines() if line.startswith("charnn: error:")]
    assert result.returncode == 1 and len(lines) == 1 and "diverged" in lines[0], err
    assert "last.pt" not in lines[0] or (world / "diverged" / "last.pt").is_file()


@pytest.mark.parametrize("command", ["sample good -n 100000000", "eval good big.txt"])
def test_ctrl_c_in_sample_or_eval_says_so(world, command):
    (world / "big.txt").write_bytes((world / "small.txt").read_bytes() * 500)  # 10 MB: seconds to score
    process = _start(world, *command.split())
    _wait_until_busy(process)
    process.send_signal(signal.SIGINT)
    err = process.communicate(timeout=60)[1].decode()
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "charnn: interrupted", err


def _wait_until_busy(process, seconds: float = 60) -> None:
    """Until the process has loaded what it computes with (PyTorch, or numpy alone when sampling on
    the CPU) and is computing."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            maps = Path(f"/proc/{process.pid}/maps").read_text()
            if "libtorch" in maps or "_multiarray_umath" in maps:
                time.sleep(1.0)
                return
        except OSError:
            return
        time.sleep(0.2)


def test_no_color_means_no_escape_codes_on_a_terminal(world):
    terminal = Terminal(["info", world / "good"], {"CHARNN_RUNS_DIR": str(world / "runs"), "NO_COLOR": "1",
                                                    "COLUMNS": "120"})
    screen = terminal.read_to_end()
    assert terminal.close() == 0
    assert b"charnn info" in screen and b"\x1b[" not in screen
