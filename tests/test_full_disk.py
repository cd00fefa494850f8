"""A full disk, for real (issue 23, item 12): `charnn` runs in a small tmpfs filled but for a few pages,
mounted in a mount namespace of its own (`unshare`), so nothing stays mounted whatever happens. A
checkpoint, config.json, the token cache or an exported file the disk refuses is one line naming the
file, exit 1, no traceback, no temporary file, and every checkpoint as it was."""

import functools
import hashlib
import os
import resource
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from charnn.runs.metrics import read_metrics
from charnn.runs.rundir import RunDir

from test_errors import T, temporaries

# inside the namespace: a tmpfs on $DISK holding $SRC's files, filled until $FREE bytes are left
SCRIPT = """set -e
mount -t tmpfs -o size=4m tmpfs "$DISK"
cp -a "$SRC"/. "$DISK"/
cd "$DISK"
cat /dev/zero > .fill 2>/dev/null || true
truncate -s -"$FREE" .fill
set +e
"$PYTHON" -m charnn "$@"
code=$?
rm .fill
cp -a "$DISK"/. "$AFTER"/
exit $code
"""


@functools.cache
def namespace() -> tuple[str, ...] | None:
    """How this machine lets a process mount a tmpfs of its own: a user namespace (unprivileged), else a
    mount namespace (root); None if neither is allowed (a container without CAP_SYS_ADMIN, say)."""
    if shutil.which("unshare") is None:
        return None
    probe = Path(os.environ.get("TMPDIR", "/tmp"))
    for prefix in (("unshare", "--user", "--map-root-user", "--mount"), ("unshare", "--mount")):
        tried = subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                               capture_output=True)
        if tried.returncode == 0:
            return prefix
    return None


@dataclass(frozen=True)
class Case:
    args: str
    free: int  # bytes left on the disk
    names: str  # the file the error names (its end)


CASES = {
    # a resume rewrites config.json first (its --max-steps changed)
    "resume-config": Case("train --resume run --max-steps 60 -q", 0, "run/config.json"),
    # two pages: config.json and the metrics fit, no checkpoint does (torch.save reports a RuntimeError)
    "resume-checkpoint": Case("train --resume run --max-steps 60 -q", 8192, ".pt"),
    "new-run-token-cache": Case(f"train small.txt {T} --out new -q", 0, ".npy"),
    "export": Case("export run/best.safetensors -o copy.safetensors -q", 0, "copy.safetensors"),
}


def checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def on_a_full_disk(source: Path, home: Path, case: Case) -> tuple[subprocess.CompletedProcess, Path]:
    (home / "disk").mkdir(parents=True)
    after = home / "after"
    after.mkdir()
    env = {**os.environ, "DISK": str(home / "disk"), "SRC": str(source), "FREE": str(case.free),
           "AFTER": str(after), "PYTHON": sys.executable, "CHARNN_RUNS_DIR": str(home / "disk" / "runs"),
           "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*namespace(), "bash", "-c", SCRIPT, "bash", *case.args.split()], env=env,
                            capture_output=True, timeout=180)
    return result, after


@pytest.fixture(scope="module")
def source(workdir, tmp_path_factory):
    """What the disk holds besides the filler: a finished run (30 steps) and its corpus."""
    root = tmp_path_factory.mktemp("source")
    shutil.copytree(workdir["run"], root / "run")
    shutil.copy(workdir["corpus"], root / "small.txt")
    return root


@pytest.fixture(scope="module")
def table(source, tmp_path_factory):
    if namespace() is None:
        pytest.skip("mounting a tmpfs needs root or unprivileged user namespaces (unshare); neither is allowed here")
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(CASES, pool.map(lambda name: on_a_full_disk(source, tmp_path_factory.mktemp(name), CASES[name]),
                                        CASES)))


@pytest.mark.parametrize("name", list(CASES))
def test_a_full_disk_is_one_line_naming_the_file_and_loses_nothing(table, source, name):
    (result, after), case = table[name], CASES[name]
    err = result.stderr.decode()
    lines = err.splitlines()
    assert result.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("charnn: error: ") and "No space left on device" in lines[0], err
    assert lines[0].split(": cannot write", 1)[0].endswith(case.names), err
    assert temporaries(after) == []
    kept = (RunDir.LAST, RunDir.BEST, RunDir.WEIGHTS, RunDir.TOKENS)
    assert {name: checksum(after / "run" / name) for name in kept} == \
           {name: checksum(source / "run" / name) for name in kept}  # every checkpoint as it was
    assert read_metrics(after / "run" / RunDir.METRICS).damaged_lines == 0
    assert not (after / "new").exists() and not (after / "copy.safetensors").exists()


def test_a_resume_says_how_to_go_on(table):
    err = table["resume-checkpoint"][0].stderr.decode()
    assert "free some space, then `charnn train --resume run` continues from its last.pt, at step 30" in err


def test_a_metrics_line_the_disk_cuts_short_goes_whole(tmp_path):
    """A line the disk takes only part of is removed, so the file still ends with a whole record. A
    file-size limit refuses the write part-way, as a full disk would (EFBIG, a no-room error too); it is
    set in a process of its own, where nothing else writes."""
    run = RunDir(tmp_path)
    run.append_metrics({"kind": "train", "step": 1, "loss": 3.0})
    whole = run.metrics_path.read_bytes()
    code = ("import sys; from charnn.data.files import WriteFailed; from charnn.runs.rundir import RunDir\n"
            "try:\n    RunDir(sys.argv[1]).append_metrics({'kind': 'train', 'step': 2, 'loss': 2.5})\n"
            "except WriteFailed as err:\n    print(err.no_room, err)")
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (len(whole) + 10, hard))  # noqa: E731
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            preexec_fn=limit, timeout=60)  # CPython ignores SIGXFSZ: the write fails instead
    assert result.stdout.startswith("True ") and "metrics.jsonl: cannot write (File too large)" in result.stdout, result
    assert run.metrics_path.read_bytes() == whole
