"""The base models charnn ships, for `charnn train --init-from NAME` and `charnn sample NAME`: small
models trained by scripts/base_model.py on the public-domain corpora in corpora/ (the README says on what
and for how long), stored here as safetensors. Torch-free."""

from __future__ import annotations

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
