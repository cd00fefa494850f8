"""The project keeps its promises about itself: CI runs the README's test command, and the
library imports without the CLI's dependencies on a terminal."""

import re
import subprocess
import sys

from conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    quick_start = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", quick_start, flags=re.S)


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    train, test = commands
    assert "charnn train corpora/tinyshakespeare.txt" in train and "charnn sample" in train
    assert "pytest" in test
    assert test in (REPO / ".ci" / "run").read_text()


def test_library_does_not_import_the_cli_stack():
    code = ("import sys, charnn; [getattr(charnn, name) for name in charnn.__all__]; "
            "bad = [m for m in ('typer', 'rich', 'charnn.cli', 'charnn.progress', 'charnn.plotting', 'matplotlib') "
            "if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_corpora_match_their_readme():
    import hashlib

    readme = (REPO / "corpora" / "README.md").read_text()
    for name in ("tinyshakespeare.txt", "warandpeace.txt", "nietzsche.txt"):
        digest = hashlib.sha256((REPO / "corpora" / name).read_bytes()).hexdigest()
        assert digest in readme, name


def test_the_readme_library_example_runs_as_written(tmp_path):
    text = (REPO / "README.md").read_text()
    section = text.split("## Using the library", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    (tmp_path / "corpora").symlink_to(REPO / "corpora")
    result = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split("\n")
    assert lines[0] == "stopped at step 200 (max_steps)"
    sample = "\n".join(lines[1:-2])
    assert sample.startswith("ROMEO:") and len(sample) == len("ROMEO:") + 200
    bpc = float(lines[-2].removesuffix(" bits per character"))
    assert 0 < bpc < 6  # 200 steps already beat the 6.0 bits of a uniform guess over 65 characters
    assert (tmp_path / "runs" / "demo" / "best.pt").is_file()
