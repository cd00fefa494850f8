"""Run directories: their layout, the runs root and `runs/latest`, who may write one, and reading runs back
for `charnn runs`, `info` and `plot`.

May import: charnn's top-level modules, `charnn.runtime`, `charnn.data` and `charnn.model`.
"""
