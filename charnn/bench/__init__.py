"""Measuring charnn: `charnn bench`, the busy-machine benchmark, startup times and the baselines.

Owns: speed against this machine's own ceilings (`benchmark`), workloads beside busy neighbours
(`busy`), encoding large synthetic corpora (`corpora`), how fast commands start (`startup`), and the
loops charnn is measured against (`baselines`).

May import: every stage (`charnn.runtime` ... `charnn.train`), never `charnn.serve` or `charnn.cli`.
"""
