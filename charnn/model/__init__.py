"""The model, in every form it takes: the PyTorch network and one training step's arithmetic, the
recurrence in numpy (what samples on the CPU without PyTorch) and on torch tensors one character at a time,
weights files without pickle (.safetensors), checkpoints (.pt), and the base models charnn ships.

May import: charnn's top-level modules, `charnn.runtime` and `charnn.data`.
"""
