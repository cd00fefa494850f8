"""charnn: character-level recurrent language models, trained with truncated stateful BPTT.

The library is usable without the CLI:

    from charnn import read_corpus, start_training, load_model, generate

Sampling on the CPU needs no PyTorch: `open_sampling_model` reads a run's best.safetensors into the
numpy `Engine`, and `Streams` samples from it.

Names are imported on first use (PEP 562), so `import charnn` is instant and the `charnn` command can
install its signal handling before PyTorch loads.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {
    "config": ["BenchOptions", "ModelConfig", "ServeConfig", "TrainConfig", "parse_duration"],
    "data.batches": ["StreamBatches", "TrainData", "split_train_val"],
    "data.corpus": ["Corpus", "read_corpus"],
    "data.vocab": ["Vocab"],
    "errors": ["CharnnError"],
    "evaluate.render": ["html_page"],
    "evaluate.score": ["EvalResult", "EvalText", "evaluate", "text_to_score"],
    "evaluate.trace": ["CharTrace", "NeuronReport", "find_neurons", "hidden_activations", "parse_neuron",
                       "text_features", "trace_text"],
    "generate.choice": ["StreamOptions"],
    "generate.output": ["BufferedOutput", "Conversation", "PipeClosed", "SampleWriter", "encode_prime",
                        "write_samples"],
    "generate.sampler": ["SamplingModel", "TextGenerator", "TorchGenerator", "beam_search", "generate",
                         "open_sampling_model"],
    "generate.settings": ["SampleRequest", "SamplingConfig"],
    "generate.streams": ["Streams", "feed_each", "sample_streams"],
    "model.archive": ["peek_checkpoint"],
    "model.checkpoint": ["load_checkpoint", "model_from_checkpoint", "model_from_weights", "save_checkpoint"],
    "model.engine": ["Engine"],
    "model.network": ["CharRNN", "detach_hidden"],
    "model.stepper": ["BlasStepper", "Stepper", "TorchSteps", "engine_from_model"],
    "model.weights": ["Weights", "read_weights", "write_weights"],
    "plan.request": ["TrainRequest", "check_request"],
    "runs.history": ["RunSummary", "list_runs", "run_loss_curves", "summarize_run"],
    "runs.info": ["RunInfo", "run_info"],
    "runs.metrics": ["LossCurves", "Metrics", "Progress", "loss_curves", "read_metrics"],
    "runs.locate": ["LoadedModel", "export_weights", "open_model"],
    "runs.rundir": ["RunDir", "latest_run", "resolve_checkpoint"],
    "runtime.device": ["resolve_device"],
    "runtime.processes": ["StopFlag", "launch_processes"],
    "serve.batcher": ["Batcher", "CompletionRequest"],
    "serve.completions": ["ApiError", "parse_completion"],
    "serve.relay": ["CompletionStream"],
    "serve.server": ["create_app", "serve"],
    "train.events": ["TrainEvents", "TrainResult", "TrainSnapshot"],
    "train.start": ["Training", "open_training", "resume_training", "start_training"],
    "train.state": ["TrainState"],
    "train.trainer": ["TrainHooks", "Trainer"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value) -> None:
        # importing the package charnn.evaluate (or charnn.generate) binds it here; the function of that name must win
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
    from .runs.locate import open_model

    loaded = open_model(path, device)
    return loaded.model, loaded.vocab


__all__ = sorted([*_MODULE_OF, "load_model"])
