"""The model, in every form it takes: its arithmetic, the PyTorch network, the numpy engine, its files.

Owns: the model's spec (`spec`: gate counts, weight names and shapes, the parameter count, the bytes
a batch and a window need; torch-free, asked by everything else), the network (`network`: `CharRNN`),
one training step's arithmetic (`step`: the optimiser, forward and backward, clipping) and its precision
(`precision`: fp32, bf16, fp16), the recurrence in numpy (`engine`: what samples on the CPU without
PyTorch) and on torch tensors one character at a time (`stepper`: the GPU's), weights files without
pickle (`weights`: .safetensors) and checkpoints (`checkpoint`: .pt; `archive`: read without PyTorch),
and the base models charnn ships (`base`, with their .safetensors files).

May import: charnn's top-level modules, `charnn.runtime` and `charnn.data`. Torch-free: `spec`,
`engine`, `weights`, `archive`, `base`.
"""
