"""charnn: character-level recurrent language models, trained with truncated stateful BPTT.

The library is usable without the CLI:

    from charnn import read_corpus, start_training, load_model, generate
"""

from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .config import ModelConfig, TrainConfig, parse_duration
from .corpus import Corpus, read_corpus
from .data import StreamBatches, split_train_val
from .device import resolve_device
from .errors import CharnnError
from .evaluate import EvalResult, evaluate
from .inspect import (CharTrace, NeuronReport, find_neurons, hidden_activations, parse_neuron, text_features,
                      trace_text)
from .model import CharRNN, detach_hidden
from .render import html_page
from .runs import latest_run, resolve_checkpoint, resume_training, start_training
from .sampling import SamplingConfig, Stepper, generate
from .train import Trainer, TrainEvents, TrainResult, TrainState
from .vocab import Vocab

__version__ = "0.1.0"


def load_model(path=None, device="cpu"):
    """(model, vocab) from a checkpoint file or run directory (default: the newest run)."""
    checkpoint = resolve_checkpoint(path)
    model, vocab = model_from_checkpoint(load_checkpoint(checkpoint), checkpoint)
    return model.to(resolve_device(device)), vocab


__all__ = [
    "CharRNN", "CharTrace", "CharnnError", "Corpus", "EvalResult", "ModelConfig", "NeuronReport",
    "SamplingConfig", "Stepper", "StreamBatches", "TrainConfig", "TrainEvents", "TrainResult", "TrainState",
    "Trainer", "Vocab", "detach_hidden", "evaluate", "find_neurons", "generate", "hidden_activations",
    "html_page", "latest_run", "load_checkpoint", "load_model", "model_from_checkpoint", "parse_duration",
    "parse_neuron", "read_corpus", "resolve_checkpoint", "resolve_device", "resume_training", "save_checkpoint",
    "split_train_val", "start_training", "text_features", "trace_text",
]
