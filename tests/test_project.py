"""The project keeps its promises about itself: CI runs the README's test command, the library imports
without the CLI's dependencies on a terminal, and the house is built by stage with imports pointing one way."""

import ast
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


# the stages, lowest first: a package imports only from its own stage and the ones before it (and charnn's
# top-level modules); packages of one stage do not import each other
STAGES = (("runtime",), ("data",), ("model",), ("runs",), ("evaluate", "generate"), ("plan",), ("train",),
          ("serve", "bench"), ("cli",))
TOP_LEVEL = {"__init__", "__main__", "config", "errors", "printable", "units"}


def _imports(path):
    """(line, target module) of every relative import in a module of charnn, lazy ones included."""
    parts = path.relative_to(REPO).with_suffix("").parts
    package = parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            targets = [node.module] if node.module else [alias.name for alias in node.names]
            for target in targets:
                yield node.lineno, ".".join(base + tuple(target.split(".")))


def test_the_house_is_built_by_stage_and_imports_point_one_way():
    charnn = REPO / "charnn"
    assert {p.stem for p in charnn.glob("*.py")} == TOP_LEVEL
    rank = {name: i for i, stage in enumerate(STAGES) for name in stage}
    packages = sorted(p for p in charnn.iterdir() if (p / "__init__.py").is_file())
    assert {p.name for p in packages} == set(rank)
    wrong = []
    for package in packages:
        assert len(list(package.glob("*.py"))) <= 12, package.name
        doc = ast_docstring(package / "__init__.py")
        assert "Owns:" in doc or "One module per" in doc, package.name
        assert "May import:" in doc, package.name
        for module in package.glob("*.py"):
            for line, target in _imports(module):
                stage = target.split(".")[1] if target.split(".")[1] in rank else None
                if stage is not None and stage != package.name and rank[stage] >= rank[package.name]:
                    wrong.append(f"{module.relative_to(REPO)}:{line} imports {target}")
    for module in charnn.glob("*.py"):
        if module.stem not in ("__init__", "__main__"):  # the lazy exports and the entry point reach everywhere
            wrong += [f"{module.name}:{line} imports {target}" for line, target in _imports(module)
                      if target.split(".")[1] in rank]
    assert not wrong, "\n".join(wrong)


def ast_docstring(path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
