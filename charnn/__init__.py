"""charnn: character-level recurrent language models, trained with truncated stateful BPTT.

The library is usable without the CLI:

    from charnn import read_corpus, start_training, load_model, generate

Names are imported on first use (PEP 562), so `import charnn` is instant and the `charnn` command can
install its signal handling before PyTorch loads.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "checkpoint": ["load_checkpoint", "model_from_checkpoint", "save_checkpoint"],
    "config": ["ModelConfig", "TrainConfig", "parse_duration"],
    "corpus": ["Corpus", "read_corpus"],
    "data": ["StreamBatches", "split_train_val"],
    "device": ["resolve_device"],
    "errors": ["CharnnError"],
    "evaluate": ["EvalResult", "evaluate"],
    "history": ["LossCurves", "Metrics", "RunInfo", "RunSummary", "list_runs", "loss_curves", "read_metrics",
                "run_info", "summarize_run"],
    "inspect": ["CharTrace", "NeuronReport", "find_neurons", "hidden_activations", "parse_neuron", "text_features",
                "trace_text"],
    "model": ["CharRNN", "detach_hidden"],
    "render": ["html_page"],
    "runs": ["latest_run", "resolve_checkpoint", "resume_training", "start_training"],
    "sampling": ["SamplingConfig", "TextGenerator", "beam_search", "generate"],
    "stepper": ["BlasStepper", "Stepper", "make_stepper"],
    "train": ["Trainer", "TrainEvents", "TrainResult", "TrainState"],
    "vocab": ["Vocab"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # importing the submodule charnn.evaluate binds it here; the function of that name must win
        if isinstance(value, types.ModuleType) and name in _MODULE_OF:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'charnn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def load_model(path=None, device="cpu"):
    """(model, vocab) from a checkpoint file or run directory (default: the newest run)."""
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .device import resolve_device
    from .runs import resolve_checkpoint

    checkpoint = resolve_checkpoint(path)
    model, vocab = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    return model.to(resolve_device(device)), vocab


__all__ = sorted([*_MODULE_OF, "load_model"])
