"""The shape of the code: the house-size targets, measured (files, function bodies, classes, parameters).

    python scripts/shape.py [DIR]          # default: charnn/

Prints the largest file, function body, class and parameter list, and every one over its limit:
files over 400 lines, function bodies over 60, classes over 250, functions with more than 8
parameters (self and cls count; Typer command signatures are exempt, their option declarations
being the command's interface). Exit code 1 when any limit is passed.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

LIMITS = {"file": 400, "body": 60, "class": 250, "params": 8}


def is_command(node: ast.FunctionDef) -> bool:
    """A Typer command: decorated with something.command(...) or .callback(...), or with charnn.cli's own
    `command(...)`, which registers the function with the app (`app.command`)."""
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and target.attr in ("command", "callback"):
            return True
        if isinstance(target, ast.Name) and target.id == "command":
            return True
    return False


def count_params(node) -> int:
    a = node.args
    return len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)


def measure(root: Path) -> dict[str, list[tuple[int, str]]]:
    found: dict[str, list[tuple[int, str]]] = {key: [] for key in LIMITS}
    for path in sorted(root.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        found["file"].append((source.count("\n"), str(path)))
        for node in ast.walk(ast.parse(source)):
            where = f"{path}:{getattr(node, 'lineno', 0)} {getattr(node, 'name', '')}"
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found["body"].append((node.end_lineno - node.body[0].lineno + 1, where))
                if not is_command(node):
                    found["params"].append((count_params(node), where))
            elif isinstance(node, ast.ClassDef):
                found["class"].append((node.end_lineno - node.lineno + 1, where))
    return found


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "charnn")
    found = measure(root)
    over = 0
    names = {"file": "lines in a file", "body": "lines in a function body", "class": "lines in a class",
             "params": "parameters of a function"}
    for key, limit in LIMITS.items():
        items = sorted(found[key], reverse=True)
        bad = [item for item in items if item[0] > limit]
        over += len(bad)
        print(f"most {names[key]}: {items[0][0]} ({items[0][1]}); limit {limit}; over it: {len(bad)}")
        for size, where in bad:
            print(f"    {size:5d}  {where}")
    files = found["file"]
    print(f"{len(files)} files, {sum(n for n, _ in files):,} lines")
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
