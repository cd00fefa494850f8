"""The base models charnn ships, for `charnn train --init-from NAME` and `charnn sample NAME`: small
models trained by scripts/base_model.py on the public-domain corpora in corpora/ (the README says on what
and for how long), stored here as safetensors. Torch-free."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

BASE_MODELS = {"english": "english.safetensors"}  # name -> file in this package


def base_model_path(name: str) -> Path | None:
    """The file of a base model charnn ships ('english'), or None if `name` is not one."""
    file = BASE_MODELS.get(name)
    if file is None:
        return None
    path = Path(str(resources.files(__package__) / file))
    return path if path.is_file() else None


def resolve_model(source: str | os.PathLike) -> Path:
    """What a model argument names: an existing path as given; else a base model's name ('english')."""
    path = Path(source)
    if path.exists() or not isinstance(source, str):
        return path
    return base_model_path(source) or path
