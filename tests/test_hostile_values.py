"""Values of any type, size or nesting in the files charnn reads back (issue 23, item 12).

A real run's config.json, metrics.jsonl and best.safetensors metadata get one value replaced by
anything at all: null, a string where a number goes, NaN, a number of 4,000 digits, a 100 kB string,
lists nested 900 deep. `charnn runs`, `info` and `plot` list what they can (a damaged run is listed
with its problems) and `sample` answers with one line or samples; none ends in "internal error" or a
traceback, and JSON on stdout stays strict JSON. Many cases call what the commands call, in this
process; a few run the commands themselves."""

import io
import json
import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console
from safetensors import safe_open
from safetensors.numpy import save

from charnn import CharnnError, list_runs, open_sampling_model, resume_training, run_info, run_loss_curves
from charnn.cli.plotting import render_chart
from charnn.cli.runs import _InfoTable, _runs_table
from charnn.printable import printable

from conftest import run_cli

# written into the file as text: lists nested 900 deep (json.dumps would recurse), a 100 kB string
DEEP, HUGE = "<lists nested 900 deep>", "<a string of 100 kB>"
WRITTEN = {json.dumps(DEEP): "[" * 900 + "]" * 900, json.dumps(HUGE): json.dumps("x" * 100_000)}
LEAVES = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**4000)
          | st.floats() | st.text(max_size=12) | st.sampled_from([DEEP, HUGE]))
HOSTILE = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                              max_size=3), max_leaves=6)
FILES = ("config.json", "metrics.jsonl", "best.safetensors", "best.pt")


def paths(value, prefix=()):
    """Every place in a JSON value: each dict key and list index, nested, the value itself too."""
    found = [prefix]
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, (*prefix, index))
    return found


def replaced(value, path, new):
    if not path:
        return new
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def materialized(value):
    """The value as a checkpoint holds it (pickled: no JSON text to splice the markers into)."""
    if value == DEEP:
        for _ in range(200):  # as deep as torch.save's pickler goes without recursing past Python's limit
            value = [value]
        return value
    if value == HUGE:
        return "x" * 100_000
    if isinstance(value, list):
        return [materialized(v) for v in value]
    if isinstance(value, dict):
        return {k: materialized(v) for k, v in value.items()}
    return value


def dumps(value) -> str:
    text = json.dumps(value)
    for marker, written in WRITTEN.items():
        text = text.replace(marker, written)
    return text


class Run:
    """The files of a real run, read once, to write back with one value replaced."""

    def __init__(self, path):
        self.path = path
        self.config = json.loads((path / "config.json").read_text())
        self.metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
        with safe_open(path / "best.safetensors", framework="np") as handle:
            self.metadata = dict(handle.metadata())
            self.arrays = {name: handle.get_tensor(name) for name in handle.keys()}
        self.payload = torch.load(path / "best.pt", weights_only=True)
        self.places = {"config.json": paths(self.config), "metrics.jsonl": paths(self.metrics),
                       "best.safetensors": [(key, *place) for key in self.metadata
                                            for place in paths(self._meta(key))],
                       "best.pt": [(key, *place) for key in self.payload if key != "model_state"
                                   for place in paths(self.payload[key])]}

    def _meta(self, key):
        try:
            return json.loads(self.metadata[key])
        except ValueError:  # format and weights_sha256 are plain text
            return self.metadata[key]

    def write(self, target, file: str, place: tuple, value) -> None:
        """A copy of the run at `target` with the value at `place` of `file` replaced."""
        shutil.copytree(self.path, target, copy_function=shutil.copy)
        if file == "config.json":
            (target / file).write_text(dumps(replaced(self.config, place, value)))
        elif file == "best.pt":
            torch.save(replaced(self.payload, place, materialized(value)), target / file)
        elif file == "metrics.jsonl":
            records = replaced(self.metrics, place, value)
            lines = [dumps(r) for r in records] if isinstance(records, list) else [dumps(records)]
            (target / file).write_text("\n".join(lines) + "\n")
        else:
            key, *inner = place
            new = replaced(self._meta(key), tuple(inner), value)
            (target / file).write_bytes(save(self.arrays, {**self.metadata, key: new if isinstance(new, str) and key in (
                "format", "format_version", "weights_sha256") else dumps(new)}))


@pytest.fixture(scope="module")
def run(workdir):
    return Run(workdir["run"])


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON output")

    return json.loads(text, parse_constant=refuse)


def answered(what, *args):
    """What a command does, called as it calls it: a result, or one short CharnnError (None)."""
    try:
        return what(*args)
    except CharnnError as err:
        assert len(str(err)) < 2000 and "\n" not in printable(str(err)), str(err)  # one line, whatever the value
        return None


def shown(renderable) -> str:
    console = Console(file=io.StringIO(), width=120)
    console.print(renderable)
    return console.file.getvalue()


def list_info_plot_and_sample(root, damaged) -> None:
    """What `charnn runs [--json]`, `info [--json]`, `plot` and `sample` read and show, in this process."""
    summaries = list_runs(root)
    strict_json(json.dumps([s.to_dict() for s in summaries]))
    shown(_runs_table(root, summaries))
    info = answered(run_info, damaged)
    if info is not None:
        strict_json(json.dumps(info.to_dict()))
        shown(_InfoTable(info).table)
    curves = answered(run_loss_curves, damaged)
    if curves is not None and not curves.empty:
        render_chart(curves, 80, 20)
    answered(open_sampling_model, damaged, "cpu")
    checkpoint = answered(run_info, damaged / "best.pt")
    if checkpoint is not None:
        strict_json(json.dumps(checkpoint.to_dict()))
        shown(_InfoTable(checkpoint).table)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_anywhere_is_listed_or_one_line(run, tmp_path_factory, data):
    file = data.draw(st.sampled_from(FILES), label="file")
    place = data.draw(st.sampled_from(run.places[file]), label="place")
    value = data.draw(HOSTILE, label="value")
    root = tmp_path_factory.mktemp("runs")
    run.write(root / "damaged", file, place, value)
    list_info_plot_and_sample(root, root / "damaged")


def test_a_value_not_as_charnn_writes_it_lists_the_run_as_damaged(run, tmp_path):
    run.write(tmp_path / "config", "config.json", ("model", "num_layers"), "two")
    run.write(tmp_path / "metrics", "metrics.jsonl", (1, "val_loss"), ["a list"])
    found = {s.name: s for s in list_runs(tmp_path)}
    assert found["config"].problems == ["config.json: model.num_layers not as charnn writes it"]
    assert found["config"].num_layers is None and found["config"].steps == 30
    assert found["metrics"].problems == ["metrics.jsonl: 1 incomplete line skipped"]


@pytest.mark.parametrize("file,place,value,commands", [
    ("config.json", ("parameters",), "many", ["runs", "runs --json", "info damaged"]),
    ("config.json", ("train",), HUGE, ["info damaged", "info damaged --json", "plot damaged"]),
    ("metrics.jsonl", (0, "step"), 10**4000, ["runs", "plot damaged"]),
    ("best.safetensors", ("format_version",), "²", ["info damaged/best.safetensors", "sample damaged -n 5"]),
], ids=lambda v: str(v)[:20])
def test_real_commands_on_a_hostile_value(run, tmp_path, file, place, value, commands):
    run.write(tmp_path / "damaged", file, place, value)
    for command in commands:
        result = run_cli(*command.split(), env={"CHARNN_RUNS_DIR": str(tmp_path)}, cwd=tmp_path)
        err = result.stderr.decode()
        assert result.returncode in (0, 1) and "internal error" not in err and "Traceback" not in err, (command, err)
        assert result.returncode == 0 or len(err.splitlines()) == 1, (command, err)
        if "--json" in command:
            strict_json(result.stdout.decode())


@pytest.mark.parametrize("place,value", [
    (("train_state", "progress", "step"), "thirty"), (("train_state", "progress", "best_val_loss"), [1.0]),
    (("train_state", "progress", "epoch"), 10**30), (("train_state", "progress"), None), (("train_state",), [1, 2]),
    (("train_config", "lr"), "fast"), (("model_config", "hidden_size"), 10**30), (("corpus",), "x"),
], ids=lambda v: str(v)[:30])
def test_a_resume_from_a_last_pt_holding_anything_is_one_line(run, tmp_path, place, value):
    shutil.copytree(run.path, tmp_path / "run")
    payload = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    torch.save(replaced(payload, place, value), tmp_path / "run" / "last.pt")
    with pytest.raises(CharnnError, match="last.pt") as refused:
        resume_training(tmp_path / "run", {"max_steps": 40})
    assert len(str(refused.value)) < 300 and "\n" not in str(refused.value), refused.value
