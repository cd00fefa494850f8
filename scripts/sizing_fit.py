"""Fit `--size auto`'s constants to the sizing study's cells (scripts/sizing.py, scripts/sizing-results.jsonl).

    python scripts/sizing_fit.py            # the candidates, best first, and what streams and lr did
    python scripts/sizing_fit.py --top 30
    python scripts/sizing.py run --cell 'KEY'   # a cell a candidate chose that nobody trained, printed here

For every combination of CHARS_PER_PARAMETER, REPEAT_HALF_LIFE and a dropout table in a grid, the rule
(`charnn.plan.sizing.choose`, with those constants) chooses a configuration for each corpus and budget
the study has trained; its loss is looked up among the measured cells (those trained for today's speed
table; at two minutes, the mean over the seeds measured). A candidate is scored by the issue's targets: the choice within 0.02 nats/char of the best grid
point measured for that corpus and budget, and never more than 0.01 worse than the fixed 2x256 default.
Candidates whose choices were not all measured are counted apart: the grid is built around the rule of
the day, so a rule far from it chooses cells nobody trained (train them with `sizing.py run --only`).

Then, for each corpus and budget, the neighbours in streams and learning rate of the grid's centre (the
choice of the constants the grid was built around) against it: the cells that would move `choose_streams`
or the learning rate from a rule of the device's speed; at an hour, today's choice with the learning rate
halved and the window doubled (stage 2's variants, where the shapes miss the hour's margin).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sizing as study  # noqa: E402  (scripts/sizing.py)

from charnn.plan import sizing  # noqa: E402

NEAR_BEST = 0.02  # the targets, nats/char
NEAR_DEFAULT = 0.01
CHARS_PER_PARAMETER = (1.0, 1.5, 2.0, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 9.0, 10.0, 12.0, 16.0, 20.0)
REPEAT_HALF_LIFE = (5.0, 10.0, 15.0, 20.0, 30.0, 50.0, 70.0, 100.0, 200.0, 1000.0)
DROPOUT_TABLES = (  # up to so many epochs: this dropout
    ((10.0, 0.1), (30.0, 0.2), (math.inf, 0.3)),
    ((5.0, 0.1), (15.0, 0.2), (math.inf, 0.3)),
    ((20.0, 0.1), (60.0, 0.2), (math.inf, 0.3)),
    ((3.0, 0.0), (10.0, 0.1), (30.0, 0.2), (math.inf, 0.3)),
    ((1.0, 0.0), (10.0, 0.1), (math.inf, 0.2)),
    ((5.0, 0.05), (15.0, 0.1), (50.0, 0.2), (math.inf, 0.3)),  # a step less, with a floor of half a step
    ((3.0, 0.05), (10.0, 0.1), (30.0, 0.2), (math.inf, 0.3)),
    ((10.0, 0.05), (30.0, 0.1), (100.0, 0.2), (math.inf, 0.3)),
    ((5.0, 0.05), (20.0, 0.1), (60.0, 0.2), (math.inf, 0.3)),
)


@dataclass(frozen=True)
class Group:
    """One corpus at one budget, and what its measured cells say."""

    corpus: str
    budget: float
    losses: dict  # config name -> best validation loss

    @property
    def best(self) -> float:
        return min(self.losses.values())

    @property
    def default(self) -> float | None:
        return self.losses.get(study.DEFAULT.name)


@dataclass(frozen=True)
class Score:
    constants: tuple
    unmeasured: int
    misses: int  # groups where the choice misses a target
    worst_to_best: float
    worst_to_default: float
    mean_to_best: float


def groups(done: dict[str, dict]) -> list[Group]:
    """Each corpus and budget's configurations, a configuration's loss the mean over its seeds measured."""
    return [Group(corpus, budget, {name: measured.mean for name, measured in configs.items()})
            for (corpus, budget), configs in sorted(study.mean_losses(done).items())]


def score(candidate: tuple, cases: list[Group], corpora: dict, speeds) -> Score:
    unmeasured, misses, to_best, to_default = 0, 0, [], []
    with study.rule_constants(*candidate):
        for group in cases:
            chosen = study.rule_config(corpora[group.corpus], group.budget, speeds).name
            if chosen not in group.losses:
                unmeasured += 1
                continue
            mine = group.losses[chosen]
            to_best.append(mine - group.best)
            if group.default is not None:
                to_default.append(mine - group.default)
            misses += (mine - group.best > NEAR_BEST) or (group.default is not None and mine - group.default > NEAR_DEFAULT)
    return Score(candidate, unmeasured, misses, max(to_best, default=0.0), max(to_default, default=0.0),
                 sum(to_best) / max(1, len(to_best)))


def unmeasured(candidate: tuple, cases: list[Group], corpora: dict, speeds) -> list[str]:
    """The cells this candidate chooses that nobody trained: `sizing.py run --cell KEY` trains them."""
    with study.rule_constants(*candidate):
        chosen = [(g, study.rule_config(corpora[g.corpus], g.budget, speeds)) for g in cases]
    return [f"{g.corpus} {g.budget:g}s {c.name}" for g, c in chosen if c.name not in g.losses]


def describe(candidate: tuple) -> str:
    cpp, half_life, dropout = candidate
    table = ", ".join(f"{p:g} to {limit:g}" if limit != math.inf else f"{p:g} beyond" for limit, p in dropout)
    return f"CHARS_PER_PARAMETER {cpp:g}, REPEAT_HALF_LIFE {half_life:g}, dropout {table}"


def training_report(cases: list[Group], corpora: dict, speeds) -> list[str]:
    """For each group, the streams and learning-rate neighbours of the grid's centre against it; at an hour,
    today's choice with the learning rate halved and the window doubled."""
    lines = []
    for group in cases:
        hour = group.budget in study.LONG_BUDGETS
        with study.rule_constants(*(study.GRID_CONSTANTS if not hour else _today())):
            chosen = study.rule_config(corpora[group.corpus], group.budget, speeds)
        if chosen.name not in group.losses:
            continue
        variants = [replace(chosen, batch=b) for b in study.STUDY_STREAMS if b != chosen.batch]
        variants += [replace(chosen, lr=round(chosen.lr * f, 6)) for f in (0.5, 2.0)]
        variants = study.hour_variants(chosen) if hour else variants
        cells = [f"{v.name.split(' ', 1)[1]}: {group.losses[v.name] - group.losses[chosen.name]:+.3f}"
                 for v in variants if v.name in group.losses]
        if cells:
            lines.append(f"{group.corpus} {group.budget / 60:g} min, {chosen.name} ({group.losses[chosen.name]:.4f}): "
                         + "; ".join(cells))
    return lines


def _today() -> tuple:
    return sizing.CHARS_PER_PARAMETER, sizing.REPEAT_HALF_LIFE, sizing.DROPOUT_BY_EPOCHS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=15, help="candidates to print")
    parser.add_argument("--wanted", type=int, default=5,
                        help="candidates to print among those whose choices are not all measured")
    args = parser.parse_args()
    results = study.read_results()
    corpora, speeds = study.corpora_info(results), study.speed_table(results)
    done = study.results_for(results, study.recorded(results, corpora, speeds))
    cases = groups(done)
    print(f"{len(done)} cells measured, over {len(cases)} corpora and budgets\n")
    today = _today()
    scores = [score(c, cases, corpora, speeds) for c in itertools.product(CHARS_PER_PARAMETER, REPEAT_HALF_LIFE,
                                                                           DROPOUT_TABLES)]
    scores.sort(key=lambda s: (s.unmeasured, s.misses, s.worst_to_best, s.mean_to_best))
    print("| constants | unmeasured | misses | worst to best | worst to default | mean to best |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    mine = next(s for s in scores if s.constants == today) if today in [s.constants for s in scores] else score(
        today, cases, corpora, speeds)
    for s in [mine] + [s for s in scores[: args.top] if s is not mine]:
        label = describe(s.constants) + (" (today's)" if s is mine else "")
        print(f"| {label} | {s.unmeasured} | {s.misses} | {s.worst_to_best:+.3f} | {s.worst_to_default:+.3f} | "
              f"{s.mean_to_best:+.3f} |")
    hopeful = sorted((s for s in scores if s.unmeasured), key=lambda s: (s.misses, s.unmeasured, s.worst_to_best))
    if hopeful:
        print("\nThe closest candidates with choices still to measure (fewest misses among their measured choices, "
              "then fewest cells to train; misses and worst counted on the measured):")
        for s in hopeful[: args.wanted]:
            print(f"- {describe(s.constants)}: {s.misses} misses, {s.worst_to_best:+.3f} to best, "
                  f"{s.worst_to_default:+.3f} to the default; to train: "
                  + "; ".join(f"--cell '{key}'" for key in unmeasured(s.constants, cases, corpora, speeds)))
    print("\nStreams and learning rate around the grid's centre (loss minus the centre's; study.GRID_CONSTANTS), "
          "and at an hour the learning rate and window around today's choice:")
    print("\n".join(training_report(cases, corpora, speeds)) or "none measured yet")


if __name__ == "__main__":
    main()
