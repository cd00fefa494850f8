"""The sizing study behind `charnn train --size auto`: which model, for which corpus and budget, on this machine.

    python scripts/sizing.py corpora              # build the corpora in runs/sizing/corpora, print their sizes
    python scripts/sizing.py speeds --repeat 5    # time every shape the study trains (on an idle machine)
    python scripts/sizing.py plan [--stage S]     # the cells, their steps and the compute they need
    nice -n 19 python scripts/sizing.py run --stage cheap --jobs 2 --threads 1   # train the cells not done yet
    python scripts/sizing.py --table              # the README's table, from the results file

Method. A run limited by --max-time measures the machine's load as much as the configuration, so the
study times each shape's training speed (characters per second with the machine otherwise idle: a
short timing repeated, the best median kept, as a shared machine only ever slows a timing down) and
converts each time budget into the optimiser steps that shape takes in that time on this machine,
evaluations included (`charnn.plan.sizing.steps_in_budget`, the same conversion `--size auto` uses). Each
cell then trains with --max-steps, so the cosine schedule spans the steps as it would span the time,
the result is deterministic (seeded), and the runs can go on in the background at low priority with
any number of threads. A cell's score is its best validation loss (what best.pt holds), nats/char, on
the same STUDY_EVAL_CHARS characters of the validation text for every cell, in pieces spread over all of
it (an hour-long cell's: best.pt's on the whole validation text, scored at its end).
Two-minute cells train at two seeds, and at a third where those two split by more than SPLIT; the
table and the fit score a configuration by the mean over its seeds.
Cells train and shapes are timed in float32: a mixed precision changes the device's speed, which
--size auto times when it runs, not what a shape learns per step.

The grid, for each corpus and budget: the rule's choice and the fixed default; the next narrower and
wider shapes; dropout a step each way (and half a step below where that step is more than SPLIT
away); 8, 16 and 32 streams; the learning rate halved and doubled (the
last two so that the rule may choose them from the device's speed as it chooses the shape). The long
stage (an hour) trains the choice, the default and the wider shape. Each function says what it trims.

Every result is appended to scripts/sizing-results.jsonl (one JSON object a line: corpora, speeds,
cells), so an interrupted study resumes where it stopped (a cell cut short resumes from its last.pt)
and the table can be regenerated at any time. A cell trained for other steps than today's speed table
gives (the shapes timed again) does not count: it is trained again, in a run directory of its own. The
code it trains with is a snapshot of charnn/ taken when `run` starts (runs/sizing/code-PID), so editing
the working tree does not disturb it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charnn.plan import sizing  # noqa: E402
from charnn.plan.sizing import Budget, Shape, Situation, SpeedTable  # noqa: E402

RESULTS = REPO / "scripts" / "sizing-results.jsonl"
WORK = REPO / "runs" / "sizing"
SEED = 1337
# Two-minute cells move with the seed by up to 0.03 nats/char on some corpora (more than the targets'
# margins), so they are trained at each of these seeds and scored by the mean; longer cells at SEED alone.
SEEDS = (SEED, 2)
REPLICATED_BUDGETS = (120.0,)
# Where those two seeds split by more than SPLIT (the targets' margin to the best grid point), the mean of
# two is no better than the margin, and TIEBREAK_SEED trains the configuration a third time.
TIEBREAK_SEED = 3
SPLIT = 0.02
CHEAP_BUDGETS = (120.0, 600.0)
LONG_BUDGETS = (3600.0,)
LONG_CORPORA = ("warandpeace", "pystdlib")
# The hour-long target: the choice at least this much better than the default (nats/char). Where the shapes
# alone fall short of it, stage 2 also trains the choice with the learning rate halved and with the window
# doubled (the "learning rate and window"): the best rate does not grow with the budget or the
# width, and a longer window is what a longer run could afford.
HOUR_MARGIN = 0.05
STUDY_STREAMS = (8, 16, 32)  # the streams the grid tries around each choice
# The rule's constants (CHARS_PER_PARAMETER, REPEAT_HALF_LIFE, DROPOUT_BY_EPOCHS) that stage 1's grid was
# first built around, its centre. Once the rule is refitted, the streams and learning rates stay measured
# around that centre's choice (they ask how a model near the choice trains, which half a dropout step or
# the next width hardly changes), while the refitted choice gets its own shape and dropout neighbours, so
# that the best grid point near it is measured too.
GRID_CONSTANTS = (5.0, 15.0, ((10.0, 0.1), (30.0, 0.2), (math.inf, 0.3)))
STUDY_VOCAB = 96  # the vocabulary the speeds are timed with (the corpora have 65 to 203 characters)
# Every cell's evaluations score the same STUDY_EVAL_CHARS validation characters, spread over the
# validation text (all of a shorter one). Left to the plan, --eval-chars grows with the steps
# (sizing.evaluation_plan), and a faster shape would be scored on more, and other, text than its
# neighbours: the validation text is not alike along its length. An hour-long cell is scored once more
# at its end, best.pt on the whole validation text (`score_whole`): its table row is that loss.
STUDY_EVAL_CHARS = 100_000
# Until 2026-12-07 charnn scored the first --eval-chars: a record of those stands only where they were
# all of the validation text (fewer than STUDY_EVAL_CHARS), as they are easier or harder than the rest.
SPREAD = "spread"  # a record's "val_sample": its evaluations scored pieces spread over the validation text
TRAIN_SHARE = 0.9  # charnn's default --val-frac 0.1


# --- corpora: one function each, with its source -----------------------------------------------


def _shared(name: str) -> Path:
    """The bundled corpora (copies of ../shared/corpora; see corpora/README.md for their sources)."""
    return REPO / "corpora" / f"{name}.txt"


def shakespeare_200k(out: Path) -> None:
    """The first 200,000 bytes of Tiny Shakespeare (karpathy/char-rnn), cut at the last line end: a
    small corpus of the kind people train on first."""
    text = _shared("tinyshakespeare").read_bytes()[:200_000]
    out.write_bytes(text[: text.rindex(b"\n") + 1])


def nietzsche(out: Path) -> None:
    """Nietzsche, Beyond Good and Evil (Keras' example corpus; public domain), 0.6 MB of prose."""
    shutil.copyfile(_shared("nietzsche"), out)


def tinyshakespeare(out: Path) -> None:
    """Tiny Shakespeare (karpathy/char-rnn; public domain), 1.1 MB of drama."""
    shutil.copyfile(_shared("tinyshakespeare"), out)


def warandpeace(out: Path) -> None:
    """Tolstoy, War and Peace, Maude translation (Project Gutenberg #2600; public domain), 3.2 MB of prose."""
    shutil.copyfile(_shared("warandpeace"), out)


def pydocs(out: Path) -> None:
    """Technical text: the reStructuredText sources of Python 3.11's documentation, as Debian's package
    python3.11-doc installs them (`apt-get install python3.11-doc`; PSF licence), every
    _sources/**/*.rst.txt in path order, 11 MB. The study's is version 3.11.2-6+deb12u9, from
    bookworm-security (`apt-get update` first: with a stale package list, apt installs deb12u8, whose
    security patches' documentation differs, and `run` refuses the corpus's hash)."""
    root = Path("/usr/share/doc/python3.11/html/_sources")
    files = sorted(root.rglob("*.rst.txt"))
    if not files:
        raise SystemExit("pydocs needs Debian's python3.11-doc: apt-get update && apt-get install python3.11-doc")
    with out.open("wb") as f:
        for path in files:
            f.write(path.read_bytes())


def pystdlib(out: Path) -> None:
    """Code: Python 3.11's standard library (the interpreter running this script; PSF licence), every .py
    file outside site-packages whose text is ASCII, in path order, each after a '# file: PATH' line: 24 MB."""
    import sysconfig  # noqa: PLC0415

    root = Path(sysconfig.get_paths()["stdlib"])
    with out.open("wb") as f:
        for path in sorted(root.rglob("*.py")):
            data = path.read_bytes()
            if "site-packages" in path.parts or not data.isascii():
                continue
            f.write(f"# file: {path.relative_to(root)}\n".encode() + data)


CORPORA = {"shakespeare-200k": shakespeare_200k, "nietzsche": nietzsche, "tinyshakespeare": tinyshakespeare,
           "warandpeace": warandpeace, "pydocs": pydocs, "pystdlib": pystdlib}


def corpus_path(name: str) -> Path:
    path = WORK / "corpora" / f"{name}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".part-{os.getpid()}-{threading.get_ident()}")  # builders never share one
        CORPORA[name](partial)
        partial.rename(path)
    return path


def corpus_record(name: str) -> dict:
    data = corpus_path(name).read_bytes()
    text = data.decode("utf-8")
    return {"kind": "corpus", "name": name, "bytes": len(data), "chars": len(text), "vocab": len(set(text)),
            "sha256": hashlib.sha256(data).hexdigest(), "source": " ".join(CORPORA[name].__doc__.split()),
            "python": platform.python_version()}


# --- the results file ---------------------------------------------------------------------------

_lock = threading.Lock()


def read_results() -> list[dict]:
    if not RESULTS.is_file():
        return []
    return [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]


def append_result(record: dict) -> None:
    with _lock, RESULTS.open("a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def corpora_info(results: list[dict]) -> dict[str, dict]:
    info = {r["name"]: r for r in results if r["kind"] == "corpus"}
    for name in CORPORA:
        if name not in info:
            info[name] = corpus_record(name)
            append_result(info[name])
    return info


def speed_table(results: list[dict]) -> SpeedTable:
    """The latest timing of each shape (chars/s on this machine, idle)."""
    table = {r["shape"]: r["chars_per_sec"] for r in results if r["kind"] == "speed"}
    if not table:
        raise SystemExit("no speeds yet: run `python scripts/sizing.py speeds` first")
    return SpeedTable(table)


# --- speeds -------------------------------------------------------------------------------------


def measure_speeds(shapes: list[Shape], repeat: int, seconds: float) -> None:
    """Time each shape `repeat` times, taking turns, and record the best median of each (chars/s)."""
    import torch  # noqa: PLC0415

    from charnn.plan.speed import time_evaluation, time_training  # noqa: PLC0415

    samples: dict[str, list[float]] = {s.name: [] for s in shapes}
    for _ in range(repeat):
        for shape in shapes:
            samples[shape.name].append(time_training(shape, STUDY_VOCAB, torch.device("cpu"), seconds).chars_per_sec)
    for shape in shapes:
        rates = samples[shape.name]
        evaluation = time_evaluation(shape, STUDY_VOCAB, torch.device("cpu"), 200_000)
        record = {"kind": "speed", "shape": shape.name, "chars_per_sec": round(max(rates), 1),
                  "eval_chars_per_sec": round(evaluation, 1),
                  "samples": [round(r) for r in rates], "threads": torch.get_num_threads(),
                  "load": os.getloadavg()[0], "machine": cpu_name(),
                  "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        append_result(record)
        print(f"{shape.name:>16}  {max(rates):>9,.0f} chars/s  (median {statistics.median(rates):,.0f}, "
              f"{len(rates)} timings); evaluation {evaluation:,.0f} chars/s, {evaluation / max(rates):.1f}x")


# --- cells --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One trained configuration: a shape (8 streams x 128 on this machine) with its dropout and lr."""

    layers: int
    hidden: int
    dropout: float
    batch: int = 8
    seq_len: int = 128
    lr: float = 2e-3
    seed: int = SEED

    @property
    def shape(self) -> Shape:
        return Shape(self.layers, self.hidden, self.batch, self.seq_len)

    @property
    def name(self) -> str:
        """The configuration, whatever its seed: what the table and the fit compare."""
        return f"{self.layers}x{self.hidden} b{self.batch} s{self.seq_len} d{self.dropout:g} lr{self.lr:g}"

    @classmethod
    def from_name(cls, name: str, seed: int = SEED) -> Config:
        """The configuration a record's "config" names (`name`'s inverse)."""
        shape, batch, seq_len, dropout, lr = name.split()
        layers, hidden = shape.split("x")
        return cls(int(layers), int(hidden), float(dropout[1:]), int(batch[1:]), int(seq_len[1:]), float(lr[2:]), seed)

    def options(self) -> list[str]:
        return ["--layers", str(self.layers), "--hidden-size", str(self.hidden), "--embed-size", str(self.hidden),
                "--batch-size", str(self.batch), "--seq-len", str(self.seq_len), "--dropout", str(self.dropout),
                "--lr", str(self.lr)]


DEFAULT = Config(2, 256, 0.1)  # today's fixed default, --size small


@dataclass(frozen=True)
class Cell:
    corpus: str
    budget: float  # seconds on this machine
    config: Config
    priority: int  # lower runs first
    half_step: bool = False  # the half dropout step below a choice at a whole step: trained only if it can matter

    @property
    def key(self) -> str:
        seed = f" seed{self.config.seed}" if self.config.seed != SEED else ""  # the first seed's keys predate seeds
        return f"{self.corpus} {self.budget:g}s {self.config.name}{seed}"

    @classmethod
    def named(cls, key: str, corpora: dict) -> list[Cell]:
        """The cells a key names ("pydocs 120s 2x128 b8 s128 d0.05 lr0.002", `key`'s form): at the seed it
        names, or else at every seed its budget trains (the tie-break seed trimmed as usual). They train
        before the grid and are never trimmed otherwise: what the fit asks to have measured."""
        words = key.split()
        try:
            corpus, budget, config = words[0], float(words[1].removesuffix("s")), Config.from_name(" ".join(words[2:7]))
            seed = int(words[7].removeprefix("seed")) if len(words) == 8 else None
        except (IndexError, ValueError):
            raise SystemExit(f"--cell {key!r}: expected CORPUS BUDGETs LxH bN sN dX lrX [seedN], as `plan` lists cells")
        if corpus not in corpora or len(words) > 8:
            raise SystemExit(f"--cell {key!r}: unknown corpus or trailing words (corpora: {', '.join(corpora)})")
        if seed is not None:
            return [cls(corpus, budget, replace(config, seed=seed), 0)]
        seeds = [(SEED, 0)] + ([(s, 5) for s in SEEDS[1:]] + [(TIEBREAK_SEED, 7)] if budget in REPLICATED_BUDGETS else [])
        return [cls(corpus, budget, replace(config, seed=s), priority) for s, priority in seeds]

    def run_name(self, steps: int) -> str:
        """Its run directory's name: a cell planned for other steps (another speed table) is another run."""
        return f"{self.key.replace(' ', '_')}_{steps}"


def situation(corpus: dict, budget: float) -> Situation:
    train = int(corpus["chars"] * TRAIN_SHARE)
    return Situation(train_chars=train, vocab_size=corpus["vocab"], budget=Budget(seconds=budget),
                     val_chars=corpus["chars"] - train)


def rule_config(corpus: dict, budget: float, speeds: SpeedTable) -> Config:
    plan = sizing.choose(situation(corpus, budget), speeds)
    s = plan.shape
    return Config(s.num_layers, s.hidden_size, plan.model["dropout"], s.batch_size, s.seq_len, plan.train["lr"])


def neighbours(config: Config, corpus: dict, budget: float, epochs: float) -> list[Config]:
    """The grid around a choice: the next narrower and wider candidate, dropout one step each way, and the
    half step below. Trimmed: more dropout where the choice reads its text less than once (nothing is
    read again, so the rule could only ever lower it there); the half step, in `trimmed`."""
    shapes = sizing.candidates(situation(corpus, budget), config.batch)
    names = [s.name for s in shapes]
    at = names.index(config.shape.name) if config.shape.name in names else 0
    near = [shapes[i] for i in (at - 1, at + 1) if 0 <= i < len(shapes)]
    out = [replace(config, layers=s.num_layers, hidden=s.hidden_size) for s in near]
    step = 0.05 if _half_step(config) else 0.1  # a refitted choice may sit half-way: the whole steps around it
    out += [replace(config, dropout=round(d, 2) + 0.0) for d in (config.dropout - step, config.dropout + step)
            if -1e-9 <= d <= 0.5 and (d < config.dropout or epochs >= 1.0)]
    if config.dropout >= 0.1 and not _half_step(config):  # the half step below, trained only where the step below is far off
        out.append(replace(config, dropout=round(config.dropout - 0.05, 2)))
    return out


def training_neighbours(config: Config, corpus: dict) -> list[Config]:
    """The choice with the other streams and the learning rate halved and doubled: what the rule could
    choose from the device's speed besides the shape. Trimmed: streams the rule may never take for this
    corpus (fewer than sizing.MIN_WINDOWS windows a stream an epoch) are not trained."""
    train = int(corpus["chars"] * TRAIN_SHARE)
    out = [replace(config, batch=streams) for streams in STUDY_STREAMS
           if streams != config.batch and train >= streams * config.seq_len * sizing.MIN_WINDOWS]
    return out + [replace(config, lr=round(config.lr * factor, 6)) for factor in (0.5, 2.0)]


def cells(stage: str, corpora: dict[str, dict], speeds: SpeedTable) -> list[Cell]:
    """The study's cells, most informative first: the rule's choice and the default everywhere, then the
    grid around the choice; the long stage checks the choice, the default and the wider alternative."""
    found: dict[str, Cell] = {}
    budgets = CHEAP_BUDGETS if stage == "cheap" else LONG_BUDGETS
    names = list(CORPORA) if stage == "cheap" else list(LONG_CORPORA)
    for budget in budgets:
        for name in names:
            for priority, config, half in _grid(stage, corpora[name], budget, speeds):
                cell = Cell(name, budget, config, priority * 10 + int(budget > CHEAP_BUDGETS[0]), half)
                found.setdefault(cell.key, cell)
                if budget in REPLICATED_BUDGETS:  # the other seeds, before the next grid points
                    for seed, rank in [(seed, 5) for seed in SEEDS[1:]] + [(TIEBREAK_SEED, 7)]:
                        again = Cell(name, budget, replace(config, seed=seed), priority * 10 + rank, half)
                        found.setdefault(again.key, again)
    return sorted(found.values(), key=lambda c: (c.priority, c.budget, c.corpus))


def _grid(stage: str, corpus: dict, budget: float, speeds: SpeedTable) -> list[tuple[int, Config, bool]]:
    """One corpus and budget's configurations, each with its rank and whether it is a half step: the
    choice, the default, the shape and dropout neighbours of the choice (and of the stage's first centre,
    once the rule is refitted), and the streams and learning rates around that centre. The long stage:
    the choice, the default and the wider shape, all of rank 0 (none is ever trimmed), then the choice's
    learning rate and window variants (`hour_variants`: trimmed where the shapes meet HOUR_MARGIN)."""
    chosen = rule_config(corpus, budget, speeds)
    if stage == "long":
        shapes = [(0, c, False) for c in (chosen, DEFAULT, wider(chosen, corpus, budget, speeds)) if c is not None]
        return shapes + [(1, c, False) for c in hour_variants(chosen)]
    wanted = [(0, chosen, False), (0, DEFAULT, False)] + _near(chosen, corpus, budget, speeds)
    with rule_constants(*GRID_CONSTANTS):
        centre = rule_config(corpus, budget, speeds)
    if centre != chosen:
        wanted += [(0, centre, False)] + _near(centre, corpus, budget, speeds)
    ranks = 1 + max(rank for rank, _, _ in wanted)
    return wanted + [(ranks + i, c, False) for i, c in enumerate(training_neighbours(centre, corpus))]


def wider(config: Config, corpus: dict, budget: float, speeds: SpeedTable) -> Config | None:
    """The next larger candidate, with the dropout the rule gives it for the epochs it reads in the budget:
    what a rule that allowed it would have trained (None: the choice is the largest)."""
    shapes = sizing.candidates(situation(corpus, budget), config.batch)
    larger = [s for s in shapes if s.parameters(STUDY_VOCAB) > config.shape.parameters(STUDY_VOCAB)]
    if not larger:
        return None
    shape = larger[0]
    alternative = replace(config, layers=shape.num_layers, hidden=shape.hidden_size)
    return replace(alternative, dropout=sizing.dropout_for(_epochs(alternative, corpus, budget, speeds)))


def hour_variants(chosen: Config) -> list[Config]:
    """Stage 2's choice with the learning rate halved and with the window doubled (wanted only where the
    shapes miss HOUR_MARGIN: `_hour_trim`)."""
    return [replace(chosen, lr=round(chosen.lr / 2, 6)), replace(chosen, seq_len=2 * chosen.seq_len)]


def _epochs(config: Config, corpus: dict, budget: float, speeds: SpeedTable) -> float:
    """The epochs a configuration reads in the budget's steps."""
    steps = cell_steps(Cell(corpus["name"], budget, config, 0), corpus, speeds)
    return steps * config.shape.chars_per_step / situation(corpus, budget).train_chars


def _near(config: Config, corpus: dict, budget: float, speeds: SpeedTable) -> list[tuple[int, Config, bool]]:
    epochs = _epochs(config, corpus, budget, speeds)
    return [(1 + i, c, _half_step(c) and not _half_step(config))
            for i, c in enumerate(neighbours(config, corpus, budget, epochs))]


@contextmanager
def rule_constants(chars_per_parameter: float, half_life: float, dropout: tuple):
    """`charnn.plan.sizing` with these constants for a while: what the fit scores, and the grid's centre."""
    saved = sizing.CHARS_PER_PARAMETER, sizing.REPEAT_HALF_LIFE, sizing.DROPOUT_BY_EPOCHS
    sizing.CHARS_PER_PARAMETER, sizing.REPEAT_HALF_LIFE, sizing.DROPOUT_BY_EPOCHS = chars_per_parameter, half_life, dropout
    try:
        yield
    finally:
        sizing.CHARS_PER_PARAMETER, sizing.REPEAT_HALF_LIFE, sizing.DROPOUT_BY_EPOCHS = saved


Losses = dict[tuple[str, float], dict[str, "Measured"]]


def trimmed(cell: Cell, losses: Losses) -> str | None:
    """Why a cell can no longer change a decision, from the cells measured (None: it can, or it cannot be
    told yet: see `undecided`)."""
    if cell.priority < 10:  # the choice, the default and cells named with --cell: only their third seed
        return _tiebreak_trim(cell, losses)
    return (_half_step_trim(cell, losses) or _tiebreak_trim(cell, losses) or _streams_trim(cell, losses)
            or _lr_trim(cell, losses) or _dropout_trim(cell, losses) or _hour_trim(cell, losses))


def undecided(cell: Cell, losses: Losses) -> bool:
    """A cell that waits on others to decide whether it is wanted: asked again later, not trimmed yet."""
    first = losses.get((cell.corpus, cell.budget), {}).get(cell.config.name)
    if cell.config.seed == TIEBREAK_SEED and (first is None or first.n < len(SEEDS)):
        return True
    if cell.priority < 10:  # as `trimmed`: only the third seed can wait
        return False
    if cell.budget in LONG_BUDGETS and _hour_base(cell, losses) is None:
        return True
    if cell.half_step:
        steps = _whole_steps(cell, losses)
        if any(m is None or m[1] < seeds_wanted(cell.budget) for m in steps):
            return True
        if _half_step_trim(cell, losses):
            return False
    if _faster_lr(cell) and not _lr_pair(cell, losses):
        return True
    if cell.config.batch == max(STUDY_STREAMS) and any(m is None or m[1] < seeds_wanted(cell.budget)
                                                       for m in _fewer_streams(cell, losses)):
        return True
    return False


def _half_step(config: Config) -> bool:
    return round(config.dropout * 10, 6) % 1 != 0


def _whole_steps(cell: Cell, losses: Losses) -> list:
    here = losses.get((cell.corpus, cell.budget), {})
    return [here.get(replace(cell.config, dropout=round(cell.config.dropout + d, 1)).name) for d in (-0.05, 0.05)]


def _half_step_trim(cell: Cell, losses: Losses) -> str | None:
    """Dropout half-way between two steps, where the two steps agree within SPLIT: the rule's dropout
    could not move by more than the margin between them."""
    if not cell.half_step:
        return None
    below, above = _whole_steps(cell, losses)
    if below is None or above is None or min(below.n, above.n) < seeds_wanted(cell.budget):
        return None
    if abs(below.mean - above.mean) <= SPLIT:
        d = cell.config.dropout
        return (f"dropout {d - 0.05:g} and {d + 0.05:g} agree within {SPLIT} ({below.mean:.3f} and "
                f"{above.mean:.3f})")
    return None


def _tiebreak_trim(cell: Cell, losses: Losses) -> str | None:
    """The tie-break seed, where the first seeds agree within SPLIT."""
    first = losses.get((cell.corpus, cell.budget), {}).get(cell.config.name)
    if cell.config.seed != TIEBREAK_SEED or first is None or first.n < len(SEEDS) or first.spread > SPLIT:
        return None
    return f"seeds {' and '.join(map(str, SEEDS))} agree within {SPLIT} ({first.spread:.3f} apart)"


def _faster_lr(cell: Cell) -> bool:
    return cell.budget > CHEAP_BUDGETS[0] and cell.config.lr > DEFAULT.lr


def _lr_pair(cell: Cell, losses: Losses) -> tuple | None:
    """At the shortest budget, the choice at its learning rate and at this cell's (doubled) one, once
    both are in at every seed."""
    here = losses.get((cell.corpus, CHEAP_BUDGETS[0]), {})
    faster = f" lr{cell.config.lr:g}"
    for name, measured in here.items():
        if name.endswith(faster) and f"{name[: -len(faster)]} lr{DEFAULT.lr:g}" in here:
            pair = here[f"{name[: -len(faster)]} lr{DEFAULT.lr:g}"], measured
            return pair if min(m.n for m in pair) >= seeds_wanted(CHEAP_BUDGETS[0]) else None
    return None


def _lr_trim(cell: Cell, losses: Losses) -> str | None:
    """The learning rate doubled at a longer budget, where doubling it lost by more than SPLIT at the
    shortest at every seed: the best rate does not grow with the budget or the width, both of which a
    longer budget's choice has more of."""
    pair = _lr_pair(cell, losses) if _faster_lr(cell) else None
    if pair and pair[1].mean - pair[0].mean > SPLIT:
        return (f"lr {cell.config.lr:g} made {pair[1].mean:.3f} against {DEFAULT.lr:g}'s {pair[0].mean:.3f} "
                f"at {CHEAP_BUDGETS[0] / 60:g} minutes")
    return None


def _fewer_streams(cell: Cell, losses: Losses) -> list:
    here = losses.get((cell.corpus, cell.budget), {})
    return [here.get(replace(cell.config, batch=b).name) for b in STUDY_STREAMS[:2]]


def _streams_trim(cell: Cell, losses: Losses) -> str | None:
    """32 streams, where 16 fell more than 0.02 behind 8 at every seed: a CPU step costs its characters, so
    more streams buy only fewer updates, and a loss that grows from 8 to 16 streams does not turn at 32."""
    if cell.config.batch != max(STUDY_STREAMS):
        return None
    eight, sixteen = _fewer_streams(cell, losses)
    wanted = seeds_wanted(cell.budget)
    if eight and sixteen and min(eight[1], sixteen[1]) >= wanted and sixteen[0] - eight[0] > 0.02:
        return f"16 streams made {sixteen[0]:.3f} against 8 streams' {eight[0]:.3f}"
    return None


def _dropout_trim(cell: Cell, losses: Losses) -> str | None:
    """A whole dropout step, where the two steps below it already rise by more than SPLIT at every seed:
    a loss that grows with dropout there does not turn a step further (as with streams)."""
    if _half_step(cell.config) or cell.config.dropout < 0.2 - 1e-9:
        return None
    here = losses.get((cell.corpus, cell.budget), {})
    lower, low = (here.get(replace(cell.config, dropout=round(cell.config.dropout - d, 1)).name) for d in (0.2, 0.1))
    wanted = seeds_wanted(cell.budget)
    if lower and low and min(lower.n, low.n) >= wanted and low.mean - lower.mean > SPLIT:
        d = cell.config.dropout
        return f"dropout {d - 0.1:g} made {low.mean:.3f} against {d - 0.2:g}'s {lower.mean:.3f}"
    return None


def _hour_base(cell: Cell, losses: Losses) -> tuple | None:
    """An hour-long variant's choice and the default, measured (None: not a variant, or not both in yet)."""
    if cell.budget not in LONG_BUDGETS or cell.priority < 10:
        return None
    here = losses.get((cell.corpus, cell.budget), {})
    chosen = here.get(replace(cell.config, lr=DEFAULT.lr, seq_len=DEFAULT.seq_len).name)
    default = here.get(DEFAULT.name)
    return (chosen, default) if chosen is not None and default is not None else None


def _hour_trim(cell: Cell, losses: Losses) -> str | None:
    """The hour's learning rate and window variants, where the choice already leads the default by HOUR_MARGIN."""
    pair = _hour_base(cell, losses)
    if pair and pair[1].mean - pair[0].mean >= HOUR_MARGIN:
        return f"the choice made {pair[0].mean:.3f} against the default's {pair[1].mean:.3f}"
    return None


def cell_steps(cell: Cell, corpus: dict, speeds: SpeedTable) -> int:
    return sizing.steps_in_budget(cell.config.shape, situation(corpus, cell.budget), cell.budget, speeds)


# --- running a cell -----------------------------------------------------------------------------


def snapshot_code() -> Path:
    """A copy of charnn/ for this process's runs, so that editing the working tree cannot change them."""
    target = WORK / f"code-{os.getpid()}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(REPO / "charnn", target / "charnn", ignore=shutil.ignore_patterns("__pycache__"))
    return target


def train_cell(cell: Cell, steps: int, corpus: Path, code: Path, threads: int) -> dict:
    run = WORK / "runs" / cell.run_name(steps)
    if resumable(cell, steps):
        command = ["train", "--resume", str(run)]
    else:
        command = ["train", str(corpus), "--out", str(run), "--overwrite", "--max-steps", str(steps),
                   *cell.config.options(), "--seed", str(cell.config.seed), "--log-every", "100", "--precision", "fp32",
                   "--eval-chars", str(STUDY_EVAL_CHARS)]
        mark_started(cell, steps)
    started = time.time()
    _charnn(command + ["-q"], code, threads)
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "eval"]
    record = {"kind": "cell", "key": cell.key, "corpus": cell.corpus, "budget": cell.budget,
              "config": cell.config.name, "seed": cell.config.seed, "steps": steps,
              "best_val_loss": min(r["val_loss"] for r in evals), "final_val_loss": evals[-1]["val_loss"],
              "best_step": min(evals, key=lambda r: r["val_loss"])["step"], "val_chars": evals[-1]["val_chars"],
              "val_sample": SPREAD}
    if cell.budget in LONG_BUDGETS:
        record.update(score_whole(run, code, threads))
    return {**record, "wall_seconds": round(time.time() - started), "threads": threads, "cpu": cpu_name(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _start_mark(cell: Cell, steps: int) -> Path:
    return WORK / "started" / f"{cell.run_name(steps)}.json"


def mark_started(cell: Cell, steps: int) -> None:
    """Note how the study scores the run it starts for a cell (beside the run: charnn owns its directory)."""
    mark = _start_mark(cell, steps)
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.write_text(json.dumps({"key": cell.key, "steps": steps, "val_sample": SPREAD}) + "\n")


def resumable(cell: Cell, steps: int) -> bool:
    """A run with a last.pt that this study started for the cell and scores as it does today. A run left by an
    older study (scored on the first characters) would be resumed, or taken as finished, with evaluations
    the table no longer counts: it is trained again instead."""
    try:
        mark = json.loads(_start_mark(cell, steps).read_text())
    except (OSError, ValueError):
        return False
    return mark.get("val_sample") == SPREAD and (WORK / "runs" / cell.run_name(steps) / "last.pt").is_file()


def score_whole(run: Path, code: Path, threads: int) -> dict:
    """best.pt of a finished run scored on its whole validation text (`charnn eval RUN`)."""
    report = json.loads(_charnn(["eval", str(run), "--json", "--threads", str(threads)], code, threads))
    return {"whole_val_loss": report["loss"], "whole_val_chars": report["chars"]}


class Stopping:
    """The cells' charnn processes, and whether the study is stopping: SIGTERM to the study (`pkill -f
    "sizing.py run"`) passes on to them (charnn saves last.pt and exits, the cell resumes next time) and
    starts no other cell, rather than leave them training with nobody to record them."""

    def __init__(self) -> None:
        self.children: set[subprocess.Popen] = set()
        self.event = threading.Event()
        self.lock = threading.Lock()  # not `_lock`: the handler runs in the main thread, whatever it holds

    def stop(self, *_) -> None:
        self.event.set()
        with self.lock:
            for child in self.children:
                child.terminate()


STOPPING = Stopping()


def _charnn(command: list[str], code: Path, threads: int) -> str:
    """`python -m charnn COMMAND` with the snapshot's code, on the CPU at `threads` threads; its stdout."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": str(threads),
           "CHARNN_RUNS_DIR": str(WORK / "runs")}
    # the working directory is not the checkout: `-m` puts it first on the path, before the snapshot
    args = [sys.executable, "-m", "charnn", *command, "--device", "cpu"]
    with subprocess.Popen(args, env=env, cwd=WORK, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True) as child:
        with STOPPING.lock:
            STOPPING.children.add(child)
            if STOPPING.event.is_set():
                child.terminate()
        try:
            out, _ = child.communicate()
        finally:
            with STOPPING.lock:
                STOPPING.children.discard(child)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, args, out)
    return out


def rescore(results: list[dict], code: Path, threads: int) -> None:
    """Score the hour-long cells recorded before `score_whole` was, whose run directories are still here."""
    latest = {r["key"]: r for r in results if r["kind"] == "cell"}
    for record in latest.values():
        run = WORK / "runs" / record_cell(record).run_name(record["steps"])
        if record["budget"] in LONG_BUDGETS and "whole_val_loss" not in record and (run / "best.pt").is_file():
            append_result({**record, **score_whole(run, code, threads)})
            print(f"scored {record['key']} on its whole validation text", flush=True)


def pace(results: list[dict], threads: int) -> tuple[float, str]:
    """A cell's wall-clock seconds per second of its budget, as this CPU's records at these threads show
    (the median: a resumed cell shows less), or 1.4 on an otherwise idle machine if they are too few."""
    ratios = [r["wall_seconds"] / r["budget"] for r in results if r["kind"] == "cell" and "wall_seconds" in r
              and r.get("cpu") == cpu_name() and r.get("threads") == threads]
    if len(ratios) < 5:
        return 1.4, "on an otherwise idle machine"
    ratio = statistics.median(ratios)
    return ratio, f"at the pace of the {len(ratios)} cells recorded on this CPU ({ratio:.2f} s a budget second)"


def cpu_name() -> str:
    """The CPU's model, which a cell's record keeps: another CPU rounds differently, another draw."""
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
    except OSError:
        models = []
    return models[0] if models else platform.processor() or platform.machine()


def _claim_path(cell: Cell, steps: int) -> Path:
    return WORK / "claims" / cell.run_name(steps)


def current(record: dict, steps: int) -> bool:
    """Whether a cell's record is for these steps and scored as the study scores: the speeds timed again
    move every cell's steps, and a record trained for other steps (by more than 2%), or scored on other
    validation text (STUDY_EVAL_CHARS spread over it, or all of a shorter one), is not the cell any more:
    it is trained again."""
    if record["budget"] in LONG_BUDGETS:
        scored = "whole_val_loss" in record
    else:
        chars = record.get("val_chars", math.inf)
        scored = chars < STUDY_EVAL_CHARS or chars == STUDY_EVAL_CHARS and record.get("val_sample") == SPREAD
    return scored and abs(record["steps"] - steps) <= 0.02 * steps


def score(record: dict) -> float:
    """A cell's loss: its best evaluation's, or for an hour-long cell best.pt's on the whole validation text."""
    return record["whole_val_loss"] if record["budget"] in LONG_BUDGETS else record["best_val_loss"]


def results_for(results: list[dict], planned: list[tuple[Cell, int]]) -> dict[str, dict]:
    """The records of the planned cells that are current, by key (the latest of each)."""
    steps = {cell.key: n for cell, n in planned}
    return {r["key"]: r for r in results if r["kind"] == "cell" and r["key"] in steps and current(r, steps[r["key"]])}


def recorded(results: list[dict], corpora: dict, speeds: SpeedTable) -> list[tuple[Cell, int]]:
    """Every cell with a record, planned or not, and the steps today's speed table gives it: a grid that
    moves with the rule's constants keeps what it measured before."""
    found = {}
    for r in results:
        if r["kind"] == "cell" and r["corpus"] in corpora:
            cell = record_cell(r)
            found[cell.key] = (cell, cell_steps(cell, corpora[cell.corpus], speeds))
    return list(found.values())


def record_cell(record: dict) -> Cell:
    """The cell a record is of, its configuration and seed read back from the record."""
    return Cell(record["corpus"], record["budget"], Config.from_name(record["config"], record.get("seed", SEED)), 0)


def claim(cell: Cell, steps: int) -> bool:
    """Take a cell for this process: not if it is done or a live study process has it (several can run)."""
    if cell.key in results_for(read_results(), [(cell, steps)]):
        return False
    path = _claim_path(cell, steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if _alive(int(path.read_text())):
            return False
    except (FileNotFoundError, ValueError):
        pass
    path.write_text(str(os.getpid()))
    return True


def _alive(pid: int) -> bool:
    """Whether a process runs: a killed one stays a zombie until it is reaped, which `kill -0` still finds."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone meanwhile; or no /proc, where kill -0 found it


def release(cell: Cell, steps: int) -> None:
    _claim_path(cell, steps).unlink(missing_ok=True)


def run_cells(todo: list[tuple[Cell, int]], everything: list[tuple[Cell, int]], corpora: dict, jobs: int,
              threads: int, code: Path) -> None:
    for name in {cell.corpus for cell, _ in todo}:  # built here, once, not by two workers at a time
        digest = hashlib.sha256(corpus_path(name).read_bytes()).hexdigest()
        if digest != corpora[name]["sha256"]:
            raise SystemExit(f"{name}: the corpus built here is not the one the results file records "
                             f"(sha256 {digest[:12]}..., recorded {corpora[name]['sha256'][:12]}...)")
    queue, deferred = list(todo), set()

    def worker() -> None:
        while True:
            with _lock:
                if not queue or STOPPING.event.is_set():
                    return
                cell, steps = queue.pop(0)
            if not claim(cell, steps):  # done meanwhile, or another study process is training it
                continue
            losses = mean_losses(results_for(read_results(), everything))
            if undecided(cell, losses) and cell.key not in deferred:  # what it waits on is still training
                release(cell, steps)
                with _lock:
                    deferred.add(cell.key)
                    queue.append((cell, steps))
                continue
            why = trimmed(cell, losses)
            if why:
                release(cell, steps)
                print(f"trim   {cell.key}: {why}", flush=True)
                continue
            print(f"start  {cell.key}: {steps:,} steps", flush=True)
            try:
                record = train_cell(cell, steps, corpus_path(cell.corpus), code, threads)
            except subprocess.CalledProcessError as err:
                print(f"stopped {cell.key}: it resumes next time" if STOPPING.event.is_set() else f"FAILED {cell.key}: {err}",
                      flush=True)
                continue
            finally:
                release(cell, steps)
            append_result(record)
            print(f"done   {cell.key}: {score(record):.4f} ({record['wall_seconds']}s)", flush=True)

    workers = [threading.Thread(target=worker) for _ in range(jobs)]
    previous = signal.signal(signal.SIGTERM, STOPPING.stop)
    try:
        for w in workers:
            w.start()
        for w in workers:
            while w.is_alive():  # a short wait, so that the main thread runs the signal handler promptly
                w.join(timeout=0.5)
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- the table ----------------------------------------------------------------------------------


def planned(stages: tuple[str, ...], corpora: dict, speeds: SpeedTable) -> list[tuple[Cell, int]]:
    """The cells of these stages and the steps each trains for, on today's speed table."""
    return [(c, cell_steps(c, corpora[c.corpus], speeds)) for stage in stages for c in cells(stage, corpora, speeds)]


class Measured(NamedTuple):
    """A configuration's best validation loss, averaged over the seeds measured; how many those are; and
    how far apart the first two seeds' losses are (0 with one seed)."""

    mean: float
    n: int
    spread: float = 0.0


def seeds_wanted(budget: float, spread: float = 0.0) -> int:
    if budget not in REPLICATED_BUDGETS:
        return 1
    return len(SEEDS) + (spread > SPLIT)


def mean_losses(done: dict[str, dict]) -> dict[tuple[str, float], dict[str, Measured]]:
    """For each (corpus, budget): config name -> its Measured losses over the seeds trained."""
    found: dict[tuple[str, float], dict[str, dict[int, float]]] = {}
    for record in done.values():
        seeds = found.setdefault((record["corpus"], record["budget"]), {}).setdefault(record["config"], {})
        seeds[record.get("seed", SEED)] = score(record)
    return {group: {name: _measured(seeds) for name, seeds in configs.items()} for group, configs in found.items()}


def _measured(seeds: dict[int, float]) -> Measured:
    first = [seeds[s] for s in SEEDS if s in seeds]
    spread = max(first) - min(first) if len(first) > 1 else 0.0
    return Measured(statistics.fmean(seeds.values()), len(seeds), spread)


def table(results: list[dict], corpora: dict, speeds: SpeedTable) -> str:
    """Markdown: for each corpus and budget, the rule's choice and its loss, the best grid point's, the
    default's; only the records trained for the steps today's speed table gives. A loss is the mean over
    the cell's seeds; one marked * has fewer of them measured so far than it will have."""
    losses = mean_losses(results_for(results, recorded(results, corpora, speeds)))
    lines = ["| corpus | size | budget | chosen | its loss | best grid point | its loss | 2x256 default | "
             "chosen - best | chosen - default |", "| --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for budget in CHEAP_BUDGETS + LONG_BUDGETS:
        for name in CORPORA:
            if budget in LONG_BUDGETS and name not in LONG_CORPORA:
                continue
            chosen = rule_config(corpora[name], budget, speeds)
            lines.append(_table_row(name, corpora[name], budget, chosen, losses.get((name, budget), {})))
    return "\n".join(lines)


def _table_row(name: str, corpus: dict, budget: float, chosen: Config, here: dict[str, Measured]) -> str:
    best = min(here, key=lambda config: here[config][0], default=None)
    mine, default, top = here.get(chosen.name), here.get(DEFAULT.name), here.get(best)

    def fmt(x):
        return "pending" if x is None else f"{x[0]:.3f}" + ("*" if x[1] < seeds_wanted(budget, x[2]) else "")

    def diff(a, b):
        return "" if a is None or b is None else f"{a[0] - b[0]:+.3f}"

    return (f"| {name} | {corpus['bytes'] / 1e6:.1f} MB | {budget / 60:g} min | "
            f"{chosen.name.replace(' s128', '')} | {fmt(mine)} | {best.replace(' s128', '') if best else 'pending'} | "
            f"{fmt(top)} | {fmt(default)} | {diff(mine, top)} | {diff(mine, default)} |")


# --- commands -----------------------------------------------------------------------------------


def study_shapes() -> list[Shape]:
    pairs = [(2, w) for w in sizing.WIDTHS] + [(3, w) for w in sizing.DEEP_WIDTHS[:2]]
    return [Shape(layers, width, streams, 128) for layers, width in pairs for streams in STUDY_STREAMS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=("corpora", "speeds", "plan", "run"))
    parser.add_argument("--table", action="store_true", help="print the README's table from the results")
    parser.add_argument("--stage", choices=("cheap", "long", "all"), default="all")
    parser.add_argument("--jobs", type=int, default=2, help="cells trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per cell")
    parser.add_argument("--repeat", type=int, default=5, help="timings per shape (speeds)")
    parser.add_argument("--seconds", type=float, default=1.5, help="seconds per timing (speeds)")
    parser.add_argument("--limit", type=int, default=None, help="train at most this many cells (run)")
    parser.add_argument("--cell", action="append", default=[],
                        help="also train this cell first, planned or not, e.g. 'pydocs 120s 2x192 b8 s128 d0.05 "
                             "lr0.002' (at each seed its budget wants; repeatable): what sizing_fit.py asks for")
    parser.add_argument("--only", action="append", default=[],
                        help="only the cells whose key contains this text, e.g. 'tinyshakespeare 600s' (repeatable)")
    args = parser.parse_args()
    results = read_results()
    if args.command == "speeds":
        measure_speeds(study_shapes(), args.repeat, args.seconds)
        return
    corpora = corpora_info(results)
    if args.command == "corpora":
        for info in corpora.values():
            print(f"{info['name']:>17}  {info['bytes']:>11,} bytes  {info['vocab']:>4} characters  {info['source']}")
        return
    speeds = speed_table(results)
    if args.table:
        print(table(results, corpora, speeds))
        return
    stages = ("cheap", "long") if args.stage == "all" else (args.stage,)
    code = snapshot_code() if args.command == "run" else None
    if code is not None:  # before the plan: an hour-long cell that only wants its score is not trained again
        rescore(results, code, args.threads)
        results = read_results()
    named = [(c, cell_steps(c, corpora[c.corpus], speeds)) for key in args.cell for c in Cell.named(key, corpora)]
    grid = [(c, steps) for c, steps in planned(stages, corpora, speeds)
            if not args.only or any(text in c.key for text in args.only)]
    everything = named + [(c, steps) for c, steps in grid if c.key not in {n.key for n, _ in named}]
    done = results_for(results, everything + recorded(results, corpora, speeds))
    wanted = [(c, steps) for c, steps in everything if c.key not in done]
    losses = mean_losses(done)
    todo = [(c, steps) for c, steps in wanted if undecided(c, losses) or not trimmed(c, losses)]
    budget_total = sum(c.budget for c, _ in todo if not undecided(c, losses))
    maybe = sum(undecided(c, losses) for c, _ in todo)
    ratio, seen = pace(results, args.threads)
    print(f"{len(todo) - maybe} cells to train, {budget_total / 3600:.1f} h of this machine's time at full speed "
          f"(about {budget_total * ratio / 3600 / max(args.jobs, 1):.1f} h with {args.jobs} jobs of "
          f"{args.threads} thread, {seen}), and {maybe} more if the cells they wait on "
          f"call for them (a third seed, half a dropout step, a doubled learning rate, the hour's learning "
          f"rate and window)")
    if args.command == "plan":
        for cell, steps in wanted:
            why = None if undecided(cell, losses) else trimmed(cell, losses)
            when = "  waits on other cells" if undecided(cell, losses) else ""
            print(f"  p{cell.priority:<3} {cell.key:<60} {steps:>8,} steps" + (f"  trimmed: {why}" if why else when))
    if code is not None:
        run_cells(todo[: args.limit], everything + recorded(results, corpora, speeds), corpora, args.jobs,
                  args.threads, code)
        shutil.rmtree(code, ignore_errors=True)


if __name__ == "__main__":
    main()
