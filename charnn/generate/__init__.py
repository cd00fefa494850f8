"""Drawing text from a model: one sampler, whatever steps the model.

Owns: the sampling settings, their defaults and limits, checked in one place (`settings`), choosing each
stream's next character from its logits (`choice`: repetition penalty, temperature, top-k, top-p, min-p,
the draw), a batch of streams with their own options and random numbers (`streams`), beam search
(`beam`), choosing what steps the model, once (`sampler`: the numpy engine on the CPU, PyTorch's
stepper on a GPU, both behind the same small interface; and the library's `generate`), and generated
text onto a byte stream (`output`: what `charnn sample` prints), and a choice's characters as the text a
server hands out, up to a stop string or a length (`stops`).

May import: charnn's top-level modules, `charnn.runtime`, `charnn.data`, `charnn.model` and `charnn.runs`.
Torch-free: PyTorch is imported only when a torch model is given or a GPU asked for.
"""
