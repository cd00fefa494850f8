"""Values read back from files charnn wrote (config.json, metrics.jsonl, a checkpoint's or weights file's
records), which may since hold anything: a string where a number goes, null, NaN, a number of 4,000
digits, lists nested 900 deep. Each value is taken only as what it should be, else as missing (None),
so no reader trips over one; `plain` makes a copy that JSON output can always carry, and `odd_values`
names what is not as charnn writes it (`charnn runs` lists it as a problem).
"""

from __future__ import annotations

import math

from ..config import ModelConfig, TrainConfig, flag
from ..errors import CharnnError
from ..printable import brief

MAX_WHOLE = 2**63  # no count charnn keeps (steps, sizes, characters) comes near; a bigger one is not charnn's
MAX_DEPTH = 16  # charnn's own sections are at most three levels deep


def whole(value) -> int | None:
    """A whole number (not a bool, not a float) of a size charnn could have written, else None."""
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_WHOLE < value < MAX_WHOLE:
        return None
    return value


def finite(value) -> float | None:
    """A finite number as a float, else None (for missing, non-numeric, NaN or infinite values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # a whole number past float's range
        return None
    return value if math.isfinite(value) else None


def text(value) -> str | None:
    return value if isinstance(value, str) else None


def texts(value) -> list[str] | None:
    """A list of strings (a corpus's sources), else None."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def section(value) -> dict:
    """A section of a file (config.json's model, train, vocab, corpus): a dict, else an empty one."""
    return value if isinstance(value, dict) else {}


def plain(value, depth: int = 0):
    """A copy JSON can always write (`json.dumps`, `allow_nan=False`): strings, finite numbers, bools,
    None, and lists and string-keyed dicts of them, at most MAX_DEPTH deep; anything else is None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return whole(value)
    if isinstance(value, float):
        return finite(value)
    if depth >= MAX_DEPTH:
        return None
    if isinstance(value, (list, tuple)):
        return [plain(item, depth + 1) for item in value]
    if isinstance(value, dict):
        return {key: plain(item, depth + 1) for key, item in value.items() if isinstance(key, str)}
    return None


# --- a run's config.json, a checkpoint's or weights file's model --------------------------------------


def read_model_config(data) -> ModelConfig:
    """A ModelConfig from a file, validated, its sizes whole numbers charnn could have written (a file may
    say anything). Raises CharnnError, or TypeError, ValueError or OverflowError for data of another shape."""
    if not isinstance(data, dict):
        raise TypeError(f"a model config is a mapping, not {brief(data)}")
    config = ModelConfig.from_dict(data)
    for name in ("vocab_size", "num_layers", "hidden_size", "embed_size"):
        value = getattr(config, name)
        if isinstance(value, int) and not isinstance(value, bool) and whole(value) is None:
            raise CharnnError(f"{flag(name)} must be below 2**63, not {brief(value)}")
    return config.validate()


def train_config(config: dict) -> TrainConfig | None:
    """The run's training configuration, if config.json holds a valid one."""
    try:
        return TrainConfig.from_dict(section(config.get("train"))).validate()
    except (CharnnError, TypeError, ValueError):
        return None


_SHOWN = (("model.cell", "model", "cell", text), ("model.num_layers", "model", "num_layers", whole),
          ("model.hidden_size", "model", "hidden_size", whole), ("model.vocab_size", "model", "vocab_size", whole),
          ("corpus.sources", "corpus", "sources", texts), ("vocab.chars", "vocab", "chars", text))


def odd_values(config: dict) -> list[str]:
    """The values runs and info show that are not of the type charnn writes (a missing one is not odd)."""
    odd = [key for key in ("model", "train", "vocab", "corpus") if config.get(key) is not None
           and not isinstance(config[key], dict)]
    odd += [name for name, part, key, kind in _SHOWN
            if section(config.get(part)).get(key) is not None and kind(config[part][key]) is None]
    if config.get("parameters") is not None and whole(config["parameters"]) is None:
        odd.append("parameters")
    if isinstance(config.get("train"), dict) and train_config(config) is None:
        odd.append("train")
    return odd
