"""The machine and the process: what every stage runs on, whatever it computes.

Owns: the thread policy (`threads`: how many threads numpy's BLAS and PyTorch use, measured as the
load changes), the device (`device`: CPU, CUDA or MPS, chosen once; out-of-memory as one error), the
memory free for an allocation (`memory`), signals (`signals`: Ctrl-C and SIGTERM end every command with
its exit code and one line) and the processes of `--nproc` and torchrun (`processes`).

May import: charnn's top-level modules (errors, units), and PyTorch only where a device needs it.
"""
