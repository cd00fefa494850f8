"""Drawing text from a model: the sampling options and their filters, batches of streams, beam search,
sampling from a torch model as a library, and generated text onto a byte stream (what `charnn sample`
prints).

May import: charnn's top-level modules, `charnn.runtime`, `charnn.data`, `charnn.model` and `charnn.runs`.
"""
